"""`headwater api`: a Lambda-compatible HTTP API, so boto3, the AWS CLI and every AWS SDK invoke and
inspect Headwater's functions unchanged (reference: ../shared/spec/lambda-api.md).

    app.py          read, authenticate, route, answer; errors rendered once
    routes.py       the table of operations, one resource family per module:
    invoke.py         Invoke
    functions.py      ListFunctions, GetFunction, GetFunctionConfiguration
    names.py        function names, partial ARNs, ARNs and qualifiers
    sigv4.py        Signature Version 4, recomputed with botocore's signer
    access_keys.py  the keys accepted, from a file or a mounted Kubernetes Secret
    errors.py       errors as botocore parses them
    server.py       uvicorn, TLS, /metrics and /healthz
"""
