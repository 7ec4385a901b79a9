// Validates custom resources against the CRD schemas compiled into the @kubernetes-models packages.
// Usage: node validate_crds.mjs MODELS_DIR < objects.json   (a JSON array of objects)
// Prints a JSON array with, per object, {kind, name, errors: [...]}; exits 2 on an unknown kind.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = process.argv[2];
const groups = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1/index.js",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  const path = groups[object.apiVersion];
  if (!path) {
    console.error(`no CRD schema for ${object.apiVersion}`);
    process.exit(2);
  }
  const module = await import(pathToFileURL(join(models, "node_modules", path)).href);
  const Model = module[object.kind];
  if (!Model) {
    console.error(`no CRD schema for ${object.apiVersion} ${object.kind}`);
    process.exit(2);
  }
  let errors = [];
  try {
    new Model(object).validate();
  } catch (error) {
    errors = (error.errors || [{ message: error.message }]).map(
      (e) => `${e.instancePath || ""} ${e.message}${e.params ? " " + JSON.stringify(e.params) : ""}`.trim(),
    );
  }
  results.push({ kind: object.kind, name: object.metadata?.name, errors });
}
console.log(JSON.stringify(results));
