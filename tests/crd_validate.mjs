// Validates Kubernetes custom resources against the CRD schemas the
// @kubernetes-models npm packages carry (installed by scripts/setup.d/30-schemas).
// Input: a JSON list of objects on stdin. Output: one JSON line per object,
// {"kind", "name", "error"} (error null when valid). Exit 0 unless the input is unreadable.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "networking.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
};
const modules = resolve(process.argv[2], "node_modules");  // argv[2]: the folder holding node_modules/
const objects = JSON.parse(readFileSync(0, "utf8"));
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const name = obj.metadata?.name ?? "";
  let error = null;
  const pkg = PACKAGES[group];
  if (!pkg) {
    error = `no schema package for ${obj.apiVersion}`;
  } else {
    try {
      const file = resolve(modules, pkg, group, version, `${obj.kind}.js`);
      const mod = await import(pathToFileURL(file).href);
      new mod[obj.kind](obj).validate();
    } catch (e) {
      error = String(e.message ?? e);
    }
  }
  console.log(JSON.stringify({ kind: obj.kind, name, error }));
}
