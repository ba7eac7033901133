// Validates Kubernetes objects against the schemas the cluster checks them with: Istio's CRDs
// (@kubernetes-models/istio), Gateway API's (@kubernetes-models/gateway-api) and the core API
// (kubernetes-models). Reads [{where, object}] as JSON on stdin; prints one line per object,
// `ok <where> <kind>`, `invalid <where> <kind>: <errors>` or `unknown <where> <apiVersion> <kind>`
// (no package here has its schema: the caller must check it another way, or fail). Exit 0 if
// every object validated, 1 otherwise.
const PACKAGES = {
  "networking.istio.io": "@kubernetes-models/istio",
  "extensions.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "telemetry.istio.io": "@kubernetes-models/istio",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

async function model(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z0-9]+$/.test(kind)) return null;
  const slash = apiVersion.lastIndexOf("/");
  const group = slash < 0 ? "" : apiVersion.slice(0, slash);
  const pkg = group === "" ? "kubernetes-models" : group.includes(".") ? PACKAGES[group] : "kubernetes-models";
  if (!pkg) return null;
  try {
    const mod = await import(`${pkg}/${apiVersion}/${kind}`);
    const cls = mod[kind];
    // A schema-less helper type of the same name is not a resource: it must carry kind and version.
    return cls && cls.kind === kind && cls.apiVersion === apiVersion ? cls : null;
  } catch {
    return null;
  }
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const { where, object } of JSON.parse(input)) {
  const { apiVersion, kind } = object ?? {};
  const cls = await model(apiVersion, kind);
  if (!cls) {
    console.log(`unknown ${where} ${apiVersion} ${kind}`);
    failed = true;
    continue;
  }
  try {
    new cls(object).validate();
    console.log(`ok ${where} ${kind}`);
  } catch (e) {
    const errors = (e.errors ?? []).map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ");
    console.log(`invalid ${where} ${kind}: ${errors || e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
