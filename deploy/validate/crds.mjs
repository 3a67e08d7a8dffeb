// Validates the custom resources in a kustomize output, which kubernetes-validate skips:
// KEDA ScaledObject and the Prometheus Operator's ServiceMonitor, PodMonitor, PrometheusRule and
// AlertmanagerConfig.
//   node crds.mjs <rendered.yaml> <out-dir>
// 1. each object through its kubernetes-models class (ajv against the CRD's schema: types,
//    enums, required fields);
// 2. writes <out-dir>/crds.ts, one typed object literal per resource, for `tsc --noEmit
//    --strict`: TypeScript's excess-property check rejects unknown fields, which ajv allows.
// Run by scripts/validate-deploy.sh with NODE_PATH-free resolution from the tools dir.
import fs from "node:fs";
import path from "node:path";
import yaml from "js-yaml";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import {
  PodMonitor,
  PrometheusRule,
  ServiceMonitor,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { AlertmanagerConfig } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1";

const KINDS = {
  "keda.sh/v1alpha1/ScaledObject": [ScaledObject, "@kubernetes-models/keda/keda.sh/v1alpha1", "IScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [
    TriggerAuthentication,
    "@kubernetes-models/keda/keda.sh/v1alpha1",
    "ITriggerAuthentication",
  ],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    ServiceMonitor,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
    "IServiceMonitor",
  ],
  "monitoring.coreos.com/v1/PodMonitor": [
    PodMonitor,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
    "IPodMonitor",
  ],
  "monitoring.coreos.com/v1alpha1/AlertmanagerConfig": [
    AlertmanagerConfig,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1alpha1",
    "IAlertmanagerConfig",
  ],
  "monitoring.coreos.com/v1/PrometheusRule": [
    PrometheusRule,
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
    "IPrometheusRule",
  ],
};

const [rendered, outDir] = process.argv.slice(2);
const docs = yaml.loadAll(fs.readFileSync(rendered, "utf8")).filter(Boolean);
let errors = 0;
const imports = new Map();
const literals = [];
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const known = KINDS[key];
  const isCustom = !doc.apiVersion.match(/^(v1|apps\/v1|batch\/v1|policy\/v1|networking\.k8s\.io\/v1)$/);
  if (!known) {
    if (isCustom) {
      console.error(`   error: no schema for custom resource ${key} ${doc.metadata.name}`);
      errors++;
    }
    continue;
  }
  const [Model, module, iface] = known;
  try {
    new Model(doc).validate();
    console.log(`   ok: ${doc.kind}/${doc.metadata.name} (schema)`);
  } catch (e) {
    console.error(`   error: ${doc.kind}/${doc.metadata.name}: ${e.message}`);
    errors++;
  }
  if (!imports.has(module)) imports.set(module, new Set());
  imports.get(module).add(iface);
  literals.push(`// ${doc.kind}/${doc.metadata.name}\nexport const r${literals.length}: ${iface} = ${JSON.stringify(doc, null, 2)};\n`);
}
const head = [...imports]
  .map(([m, ifaces]) => `import type { ${[...ifaces].join(", ")} } from "${m}";`)
  .join("\n");
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, "crds.ts"), `${head}\n\n${literals.join("\n")}`);
console.log(`   wrote ${literals.length} typed literals to ${path.join(outDir, "crds.ts")}`);
process.exit(errors ? 1 : 0);
