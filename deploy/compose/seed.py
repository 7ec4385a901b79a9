"""Create the local SQS queues of the compose stack and send sample messages.

Run by the moto-init service of docker-compose.yml (inside the moto image,
which ships boto3). Settings come from the environment:

    AWS_ENDPOINT_URL      moto's address (http://moto:5000)
    SEED_QUEUES           comma-separated queue names to create
    SEED_MESSAGES_QUEUE   queue that receives the sample messages (optional)
    SEED_MESSAGES         how many sample messages to send (default 0)
"""

import json
import os
import sys
import time

import boto3


def main() -> int:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://moto:5000")
    region = os.environ.get("AWS_REGION", "us-east-1")
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)

    names = [n.strip() for n in os.environ.get("SEED_QUEUES", "").split(",") if n.strip()]
    urls = {}
    for name in names:
        urls[name] = sqs.create_queue(QueueName=name)["QueueUrl"]
        print(f"queue {name}: {urls[name]}", flush=True)

    target = os.environ.get("SEED_MESSAGES_QUEUE", "")
    count = int(os.environ.get("SEED_MESSAGES", "0") or 0)
    if target and count > 0:
        url = urls.get(target) or sqs.get_queue_url(QueueName=target)["QueueUrl"]
        for i in range(count):
            body = json.dumps({"name": f"sample-{i}", "sent_at": time.time()})
            sqs.send_message(QueueUrl=url, MessageBody=body)
        print(f"sent {count} sample message(s) to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
