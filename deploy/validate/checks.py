"""Structural checks for escalator's deployment files, run by scripts/validate-deploy.sh.

Schema validators (promtool, amtool, kubernetes-validate, compose, hadolint) check that each
file is well-formed; these checks pin what escalator itself needs of them: every alert tested
and documented, the PrometheusRule identical to alerts.yml, replica counts, grace periods,
probes, security contexts, the KEDA trigger, compose start order, and the Grafana dashboard's
structure and queries. Each failure is printed; the exit status is 1 if any.

Needs only PyYAML (installed with yamllint in the tools venv).
"""

import copy
import json
import re
import sys
from pathlib import Path

import yaml

ERRORS = []


def fail(msg):
    ERRORS.append(msg)
    print(f"   error: {msg}", file=sys.stderr)


def ok(msg):
    print(f"   ok: {msg}")


def finish():
    sys.exit(1 if ERRORS else 0)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def alerts_of(rules_doc):
    return [r for g in rules_doc["groups"] for r in g["rules"] if "alert" in r]


def anchor(heading):
    """GitHub's anchor for a markdown heading."""
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


# --- Prometheus / Alertmanager ------------------------------------------------------------


def alert_coverage(rules_path, tests_path, doc_path):
    alerts = alerts_of(load_yaml(rules_path))
    tests = load_yaml(tests_path)["tests"]
    fires, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    doc = Path(doc_path).read_text() if Path(doc_path).exists() else ""
    anchors = {anchor(m) for m in re.findall(r"^#+\s+(.*)$", doc, re.M)}
    for a in alerts:
        name = a["alert"]
        if name not in fires:
            fail(f"{name}: no test case where it fires")
        if name not in quiet:
            fail(f"{name}: no test case where it stays quiet")
        want = f"docs/operations.md#{name.lower()}"
        if a.get("annotations", {}).get("runbook") != want:
            fail(f"{name}: annotation runbook should be {want}")
        if name.lower() not in anchors:
            fail(f"{name}: no runbook heading '{name}' in {doc_path}")
        for key in ("summary", "description"):
            if not a.get("annotations", {}).get(key):
                fail(f"{name}: annotation {key} missing")
    if not ERRORS:
        ok(f"{len(alerts)} alerts, each with firing and quiet tests and a runbook section")


def alert_severities(rules_path):
    for a in alerts_of(load_yaml(rules_path)):
        sev = a.get("labels", {}).get("severity")
        if sev not in ("critical", "warning", "info"):
            fail(f"{a['alert']}: severity {sev!r} is not critical|warning|info")
        if a.get("labels", {}).get("service") != "escalator":
            fail(f"{a['alert']}: label service=escalator missing (inhibit rules match on it)")
    if not ERRORS:
        ok("every alert has a routable severity")


def rules_sync(rules_path, rendered_path, out_path):
    groups = load_yaml(rules_path)["groups"]
    rules = [d for d in load_all(rendered_path) if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"expected one PrometheusRule in the kustomize output, found {len(rules)}")
        return
    spec_groups = copy.deepcopy(rules[0].get("spec", {}).get("groups"))
    # kustomize adds the namespace to every rule's labels (the operator routes only alerts
    # that carry it); otherwise the groups are alerts.yml's
    namespace = rules[0].get("metadata", {}).get("namespace")
    for g in spec_groups or []:
        for r in g.get("rules", []):
            if "alert" not in r:
                continue
            got = (r.get("labels") or {}).pop("namespace", None)
            if got != namespace:
                fail(f"alert {r['alert']}: label namespace {got!r}, want the PrometheusRule's "
                     f"{namespace!r} (without it the AlertmanagerConfig never routes it)")
    if spec_groups != groups:
        fail(
            "PrometheusRule spec.groups differs from deploy/prometheus/alerts.yml: run "
            "python3 deploy/validate/checks.py write-prometheusrule "
            "deploy/prometheus/alerts.yml deploy/k8s/base/prometheusrule.yaml"
        )
    with open(out_path, "w") as f:
        yaml.safe_dump({"groups": spec_groups or []}, f, sort_keys=False)
    if not ERRORS:
        ok(f"PrometheusRule carries the {len(groups)} groups of alerts.yml")


# --- Kubernetes ---------------------------------------------------------------------------


def alert_labels(rendered_path, alert):
    """Prints the labels alert ALERT carries as the rendered PrometheusRule defines it, as
    amtool's `name=value` arguments."""
    for d in load_all(rendered_path):
        if d.get("kind") != "PrometheusRule":
            continue
        for g in d["spec"]["groups"]:
            for r in g["rules"]:
                if r.get("alert") == alert:
                    labels = {"alertname": alert, **(r.get("labels") or {})}
                    print(" ".join(f"{k}={v}" for k, v in labels.items()))
                    return
    fail(f"no alert {alert} in {rendered_path}")


def env_value(objs, name):
    for o in objs:
        if o["kind"] == "ConfigMap":
            v = (o.get("data") or {}).get(name)
            if v is not None:
                return v
    return None


# Secrets production creates out of band (docs/operations.md, "Set the secrets").
EXTERNAL_SECRETS = {"escalator-secrets", "redis-auth", "alertmanager-receivers"}


def k8s_invariants(rendered_path):
    objs = load_all(rendered_path)
    by = {}
    for o in objs:
        by.setdefault(o["kind"], {})[o["metadata"]["name"]] = o

    def get(kind, name):
        o = by.get(kind, {}).get(name)
        if o is None:
            fail(f"{kind}/{name} missing")
        return o

    deps = by.get("Deployment", {})
    want_replicas = {"escalator-api": 3, "escalator-worker": 5, "escalator-beat": 1}
    scaled = by.get("ScaledObject", {})
    for name, n in want_replicas.items():
        d = get("Deployment", name)
        if not d:
            continue
        owner = next(
            (s for s in scaled.values() if s["spec"]["scaleTargetRef"].get("name") == name), None
        )
        if owner is not None:
            # the autoscaler owns the count: a fixed one would be reset by every apply
            if "replicas" in d["spec"]:
                fail(f"Deployment/{name}: replicas is set, but ScaledObject owns the count")
            if owner["spec"].get("minReplicaCount") != n:
                fail(f"ScaledObject for {name}: minReplicaCount "
                     f"{owner['spec'].get('minReplicaCount')!r}, want {n}")
        elif d["spec"].get("replicas") != n:
            fail(f"Deployment/{name}: replicas {d['spec'].get('replicas')!r}, want {n}")
    beat = deps.get("escalator-beat")
    if beat and beat["spec"].get("strategy", {}).get("type") != "Recreate":
        fail("Deployment/escalator-beat: strategy must be Recreate (one leader at a time)")

    # every workload: non-root, read-only root fs, no privilege escalation, requests+limits
    workloads = [
        o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    ]
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        wid = f"{w['kind']}/{w['metadata']['name']}"
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            fail(f"{wid}: pod securityContext.runAsNonRoot must be true")
        if pod.get("automountServiceAccountToken") is not False:
            fail(f"{wid}: automountServiceAccountToken should be false")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            cid = f"{wid} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{cid}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{cid}: allowPrivilegeEscalation must be false")
            if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                fail(f"{cid}: capabilities.drop must include ALL")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory") if kind == "requests" else ("memory",):
                    if r not in (res.get(kind) or {}):
                        fail(f"{cid}: resources.{kind}.{r} missing")

    # one pinned image for every escalator role: a `latest` (or untagged) image lets pods and
    # the migrate Job run different builds
    images = set()
    for w in workloads:
        for c in w["spec"]["template"]["spec"].get("containers", []):
            image = c.get("image", "")
            if image.split("@")[0].split("/")[-1].split(":")[0] == "escalator":
                images.add(image)
    for image in sorted(images):
        tag = image.split("/")[-1].partition(":")[2]
        if "@" not in image and tag in ("", "latest"):
            fail(f"escalator image {image!r} is not pinned (a version tag or a digest)")
    if len(images) > 1:
        fail(f"the escalator roles run different images: {sorted(images)}")
    if not images:
        fail("no escalator container found")

    # escalator containers: probes and ports
    def container(dep, name):
        d = deps.get(dep)
        if not d:
            return None
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] == name:
                return c
        fail(f"Deployment/{dep}: no container {name}")
        return None

    api = container("escalator-api", "api")
    if api:
        if api.get("args") != ["api"]:
            fail(f"api container args {api.get('args')!r}, want ['api']")
        ports = {p["containerPort"] for p in api.get("ports", [])}
        if 5000 not in ports:
            fail("api container does not expose port 5000")
        if api.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            fail("api livenessProbe must GET /healthz")
        if api.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz?optional=queue":
            fail("api readinessProbe must GET /readyz?optional=queue (a Redis failover would "
                 "otherwise take every replica out of the Service at once)")
    for dep, cname, port in (("escalator-worker", "worker", 9100), ("escalator-beat", "beat", 9101)):
        c = container(dep, cname)
        if not c:
            continue
        if c.get("args") != [cname]:
            fail(f"{cname} container args {c.get('args')!r}, want [{cname!r}]")
        if port not in {p["containerPort"] for p in c.get("ports", [])}:
            fail(f"{cname} container does not expose metrics port {port}")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            fail(f"{cname} livenessProbe must GET /healthz")

    # graceful shutdown: the pod must outlive ESCALATOR_SHUTDOWN_TIMEOUT (the worker's own
    # value if its container sets one), and a worker's must cover the sends under way (no new
    # one starts once stopping): a message at its ESCALATOR_SMTP_TIMEOUT and a recipient of it
    # sent again alone, or they are cut off mid-send
    shutdown = env_value(objs, "ESCALATOR_SHUTDOWN_TIMEOUT")
    worker = deps.get("escalator-worker")
    if shutdown is None:
        fail("ConfigMap does not set ESCALATOR_SHUTDOWN_TIMEOUT")
    elif worker:
        spec = worker["spec"]["template"]["spec"]
        own = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
        shutdown = float(own.get("ESCALATOR_SHUTDOWN_TIMEOUT") or shutdown)
        smtp = float(own.get("ESCALATOR_SMTP_TIMEOUT")
                     or env_value(objs, "ESCALATOR_SMTP_TIMEOUT") or 30)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not grace > shutdown:
            fail(
                f"Deployment/escalator-worker: terminationGracePeriodSeconds {grace} must "
                f"exceed ESCALATOR_SHUTDOWN_TIMEOUT {shutdown:g}"
            )
        if shutdown < 2 * smtp:
            fail(
                f"Deployment/escalator-worker: ESCALATOR_SHUTDOWN_TIMEOUT {shutdown:g} must "
                f"cover a send under way, 2 x ESCALATOR_SMTP_TIMEOUT ({smtp:g})"
            )

    # the api keeps serving through a preStop pause while its endpoint goes, then finishes
    # its longest request within the grace period
    if api:
        pre = api.get("lifecycle", {}).get("preStop", {})
        command = pre.get("exec", {}).get("command") or []
        pause = float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else None
        if pause is None:
            fail("api container: lifecycle.preStop must be exec [sleep, N]")
        else:
            timeout = float(env_value(objs, "ESCALATOR_API_TIMEOUT") or 30)
            grace = deps["escalator-api"]["spec"]["template"]["spec"].get(
                "terminationGracePeriodSeconds", 30)
            # the api drains for ESCALATOR_API_TIMEOUT + 1 s once the pause is over
            if not grace > pause + timeout + 1:
                fail(f"Deployment/escalator-api: terminationGracePeriodSeconds {grace} must "
                     f"exceed the preStop pause {pause:g} + ESCALATOR_API_TIMEOUT {timeout:g} "
                     f"+ 1 s of drain")

    # no placeholder Secret is rendered: applying it would overwrite the real one
    for s in by.get("Secret", {}).values():
        if (s["metadata"].get("annotations") or {}).get("escalator.dev/placeholder") == "true":
            fail(f"Secret/{s['metadata']['name']}: a placeholder in the production render")

    # env sources exist (the Secrets created out of band excepted: docs/operations.md)
    for w in workloads:
        for c in w["spec"]["template"]["spec"]["containers"]:
            for src in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key not in src or src[key]["name"] in by.get(kind, {}):
                        continue
                    if kind == "Secret" and src[key]["name"] in EXTERNAL_SECRETS:
                        continue
                    fail(f"{w['metadata']['name']}: envFrom {kind}/{src[key]['name']} missing")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] not in by.get("Secret", {}) | dict.fromkeys(EXTERNAL_SECRETS):
                    fail(f"{w['metadata']['name']}: env {e['name']} from Secret/{ref['name']} missing")
            # each role sees only the secrets it reads: the whole escalator Secret holds the
            # api's admin tokens and the relay's password
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    fail(f"{w['metadata']['name']}: envFrom Secret/{src['secretRef']['name']} "
                         "hands every key to every role; name the keys (secretKeyRef)")

    # ...and each role gets every secret it reads: a credential left out reaches no process
    needs = {
        "escalator-api": {"DATABASE_URL", "REDIS_URL", "ESCALATOR_API_TOKENS"},
        "escalator-worker": {"DATABASE_URL", "REDIS_URL", "ESCALATOR_SMTP_URL",
                             "ESCALATOR_SENDGRID_KEY", "ESCALATOR_TWILIO_SID",
                             "ESCALATOR_TWILIO_TOKEN", "ESCALATOR_SLACK_WEBHOOK_URL",
                             "ESCALATOR_SLACK_USER_WEBHOOKS", "ESCALATOR_WEBHOOK_SECRET"},
        "escalator-beat": {"DATABASE_URL", "REDIS_URL"},
        "escalator-migrate": {"DATABASE_URL"},
    }
    for w in workloads:
        want = needs.get(w["metadata"]["name"])
        if want is None:
            continue
        got = {e["name"] for c in w["spec"]["template"]["spec"]["containers"]
               for e in c.get("env", []) if (e.get("valueFrom") or {}).get("secretKeyRef")}
        if want - got:
            fail(f"{w['metadata']['name']}: secrets it reads are not given to it: "
                 f"{sorted(want - got)}")

    # selectors: Services and PDBs select existing pods
    pod_labels = [
        (w["metadata"]["name"], w["spec"]["template"]["metadata"].get("labels", {}))
        for w in workloads
    ]

    def selects(sel):
        return [n for n, lab in pod_labels if sel and all(lab.get(k) == v for k, v in sel.items())]

    for s in by.get("Service", {}).values():
        if not selects(s["spec"].get("selector")):
            fail(f"Service/{s['metadata']['name']}: selector matches no pod template")
    pdb_targets = set()
    for p in by.get("PodDisruptionBudget", {}).values():
        hit = selects(p["spec"]["selector"].get("matchLabels"))
        if not hit:
            fail(f"PodDisruptionBudget/{p['metadata']['name']}: selector matches no pod template")
        pdb_targets.update(hit)
    for name in ("escalator-api", "escalator-worker"):
        if name not in pdb_targets:
            fail(f"Deployment/{name}: no PodDisruptionBudget")

    # migrate Job
    job = get("Job", "escalator-migrate")
    if job:
        args = job["spec"]["template"]["spec"]["containers"][0].get("args")
        if args != ["migrate"]:
            fail(f"Job/escalator-migrate args {args!r}, want ['migrate']")

    # KEDA: scale the worker on escalator_queue_depth through Prometheus
    so = get("ScaledObject", "escalator-worker")
    if so:
        spec = so["spec"]
        ref = spec.get("scaleTargetRef", {})
        if ref.get("name") != "escalator-worker" or ref.get("kind", "Deployment") != "Deployment":
            fail(f"ScaledObject: scaleTargetRef {ref!r} is not Deployment/escalator-worker")
        for k in ("minReplicaCount", "maxReplicaCount"):
            if not isinstance(spec.get(k), int):
                fail(f"ScaledObject: {k} must be an integer")
        trig = spec.get("triggers", [])
        if not trig or trig[0].get("type") != "prometheus":
            fail("ScaledObject: first trigger must be type prometheus")
        else:
            md = trig[0].get("metadata", {})
            for k, v in md.items():
                if not isinstance(v, str):
                    fail(f"ScaledObject trigger metadata {k}: {v!r} must be a string")
            for k in ("serverAddress", "query", "threshold"):
                if k not in md:
                    fail(f"ScaledObject trigger metadata {k} missing")
            if "escalator_queue_depth" not in md.get("query", ""):
                fail("ScaledObject query must use escalator_queue_depth")

    # alert routing: the Secrets the AlertmanagerConfig reads are created out of band
    for amc in by.get("AlertmanagerConfig", {}).values():
        for ref in secret_refs(amc["spec"]):
            if ref["name"] not in EXTERNAL_SECRETS and ref["name"] not in by.get("Secret", {}):
                fail(f"AlertmanagerConfig/{amc['metadata']['name']}: Secret {ref['name']} "
                     "is neither rendered nor created out of band (EXTERNAL_SECRETS)")

    # monitoring CRDs
    for kind in ("ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"):
        if not by.get(kind):
            fail(f"no {kind}")
    if not by.get("PodMonitor") and not by.get("ServiceMonitor"):
        fail("no PodMonitor/ServiceMonitor")

    # Redis with Sentinel: master + 2 replicas
    redis = get("StatefulSet", "redis")
    if redis and redis["spec"].get("replicas") != 3:
        fail("StatefulSet/redis: want 3 pods (master + 2 replicas), each with a sentinel")
    if redis:
        names = {c["name"] for c in redis["spec"]["template"]["spec"]["containers"]}
        if not {"redis", "sentinel"} <= names:
            fail(f"StatefulSet/redis: containers {sorted(names)}, want redis and sentinel")

    if not by.get("NetworkPolicy"):
        fail("no NetworkPolicy")

    # scraping: every PodMonitor endpoint is a named port of the pods it selects, and a
    # NetworkPolicy admits the monitoring namespace to it (default deny: a port left out is a
    # target that is down, and an alert reading it never fires)
    def labelled(sel, labels):
        return all(labels.get(k) == v for k, v in (sel or {}).items())

    def monitoring_reaches(pod_labels, port_name, port_number):
        for pol in by.get("NetworkPolicy", {}).values():
            if not labelled(pol["spec"].get("podSelector", {}).get("matchLabels"), pod_labels):
                continue
            for rule in pol["spec"].get("ingress") or []:
                ports = [p.get("port") for p in rule.get("ports") or []]
                if ports and port_name not in ports and port_number not in ports:
                    continue
                sources = rule.get("from")
                if sources is None:
                    return True
                for src in sources:
                    ns = (src.get("namespaceSelector") or {}).get("matchLabels") or {}
                    if ns.get("kubernetes.io/metadata.name") == "monitoring" and "podSelector" not in src:
                        return True
        return False

    for pm in by.get("PodMonitor", {}).values():
        pid = f"PodMonitor/{pm['metadata']['name']}"
        sel = pm["spec"].get("selector", {}).get("matchLabels")
        pods = [(w["metadata"]["name"], w["spec"]["template"]) for w in workloads
                if sel and labelled(sel, w["spec"]["template"]["metadata"].get("labels", {}))]
        if not pods:
            fail(f"{pid}: selector matches no pod template")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            for name, tpl in pods:
                ports = {p.get("name"): p["containerPort"]
                         for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
                if ep.get("port") not in ports:
                    fail(f"{pid}: {name} has no container port named {ep.get('port')!r}")
                elif not monitoring_reaches(tpl["metadata"].get("labels", {}), ep["port"],
                                            ports[ep["port"]]):
                    fail(f"{pid}: no NetworkPolicy lets the monitoring namespace reach {name}'s "
                         f"port {ep['port']} ({ports[ep['port']]})")
    # the Redis alerts (alerts.yml, group escalator-redis) select these jobs by name
    for name in ("escalator-redis", "escalator-redis-sentinel", "escalator-redis-haproxy"):
        if name not in by.get("PodMonitor", {}):
            fail(f"PodMonitor/{name} missing: the Redis alerts read its job")

    if not ERRORS:
        ok(f"{len(objs)} objects satisfy escalator's invariants")


# --- compose ------------------------------------------------------------------------------


def go_seconds(text):
    """Seconds in a Go duration as compose writes it (`1m30s`, `45s`, `1.5s`)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        fail(f"cannot read the duration {text!r}")
        return 0.0
    return sum(float(n) * units[u] for n, u in parts)


def compose_invariants(json_path):
    c = json.load(open(json_path))
    svcs = c.get("services", {})
    want = {"postgres", "redis", "migrate", "api", "worker", "beat", "prometheus",
            "alertmanager", "grafana", "mailpit"}
    missing = want - set(svcs)
    if missing:
        fail(f"compose services missing: {sorted(missing)}")
    for name in ("api", "worker", "beat"):
        s = svcs.get(name, {})
        dep = s.get("depends_on", {}).get("migrate", {})
        if dep.get("condition") != "service_completed_successfully":
            fail(f"{name}: must depend on migrate with condition service_completed_successfully")
        cmd = s.get("command") or []
        if cmd[:1] != [name]:
            fail(f"{name}: command {cmd!r} should start with {name!r}")
    if not svcs.get("worker", {}).get("environment", {}).get("ESCALATOR_SMTP_URL", "").startswith("smtp://mailpit:"):
        fail("worker: ESCALATOR_SMTP_URL should default to the mailpit catcher")
    if "container_name" in svcs.get("worker", {}):
        fail("worker: container_name prevents --scale")
    if svcs.get("worker", {}).get("ports"):
        fail("worker: published ports prevent --scale")
    if svcs.get("migrate", {}).get("command", [])[:1] != ["migrate"]:
        fail("migrate: command should be ['migrate']")
    # a socket check passes while the image's first start still runs its socket-only server:
    # migrate would then find nothing on TCP, fail, and nothing would start
    pg_check = " ".join(svcs.get("postgres", {}).get("healthcheck", {}).get("test", []))
    if "pg_isready -h " not in pg_check:
        fail(f"postgres: healthcheck {pg_check!r} must check over TCP (pg_isready -h 127.0.0.1)")
    # as in Kubernetes: a worker's shutdown covers the sends under way, and the grace covers that
    worker = svcs.get("worker", {})
    shutdown = float(worker.get("environment", {}).get("ESCALATOR_SHUTDOWN_TIMEOUT") or 30)
    smtp = float(worker.get("environment", {}).get("ESCALATOR_SMTP_TIMEOUT") or 30)
    grace = go_seconds(str(worker.get("stop_grace_period", "10s")))
    if shutdown < 2 * smtp or not grace > shutdown:
        fail(f"worker: stop_grace_period {grace:g} s > ESCALATOR_SHUTDOWN_TIMEOUT {shutdown:g} s "
             f">= 2 x ESCALATOR_SMTP_TIMEOUT ({smtp:g} s) does not hold")
    # real receiver secrets live outside the tracked placeholders (ALERTMANAGER_SECRETS_DIR):
    # the whole directory mounted made operators overwrite files git tracks
    am_targets = {str(v.get("target", "")) for v in svcs.get("alertmanager", {}).get("volumes", [])}
    if "/etc/alertmanager/secrets" not in am_targets or "/etc/alertmanager" in am_targets:
        fail("alertmanager: mount alertmanager.yml and the secrets directory "
             "(ALERTMANAGER_SECRETS_DIR) separately, not deploy/alertmanager whole")
    prom = svcs.get("prometheus", {})
    if not any(str(v.get("source", "")).endswith("deploy/prometheus") for v in prom.get("volumes", [])):
        fail("prometheus: deploy/prometheus is not mounted")
    if not ERRORS:
        ok(f"{len(svcs)} services: start order, scalable worker, mounts")


# --- Grafana ------------------------------------------------------------------------------

PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap", "row"}
# Grafana's macros, replaced by representative durations before promtool parses the query
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_exprs(dash):
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            if "expr" in t:
                yield p, t


def grafana(root, out_path):
    root = Path(root)
    ds_files = list((root / "provisioning" / "datasources").glob("*.yml"))
    db_files = list((root / "provisioning" / "dashboards").glob("*.yml"))
    if not ds_files or not db_files:
        fail("grafana provisioning needs datasources/*.yml and dashboards/*.yml")
        return
    uids = set()
    for f in ds_files:
        d = load_yaml(f)
        if d.get("apiVersion") != 1:
            fail(f"{f}: apiVersion must be 1")
        for ds in d.get("datasources", []):
            if not ds.get("uid") or ds.get("type") != "prometheus" or not ds.get("url"):
                fail(f"{f}: datasource {ds.get('name')} needs uid, type prometheus and url")
            uids.add(ds.get("uid"))
    for f in db_files:
        d = load_yaml(f)
        for prov in d.get("providers", []):
            if prov.get("type") != "file" or not prov.get("options", {}).get("path"):
                fail(f"{f}: provider {prov.get('name')} needs type file and options.path")
    dashboards = list((root / "dashboards").glob("*.json"))
    if not dashboards:
        fail("no dashboard JSON in deploy/grafana/dashboards")
    rules = []
    for f in dashboards:
        dash = json.load(open(f))
        for k in ("uid", "title", "panels", "schemaVersion"):
            if k not in dash:
                fail(f"{f.name}: {k} missing")
        ids = set()
        for p in dash.get("panels", []):
            pid = p.get("id")
            if not isinstance(pid, int) or pid in ids:
                fail(f"{f.name}: panel {p.get('title')!r} needs a unique integer id")
            ids.add(pid)
            if p.get("type") not in PANEL_TYPES:
                fail(f"{f.name}: panel {pid} type {p.get('type')!r} unknown")
            gp = p.get("gridPos", {})
            if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")):
                fail(f"{f.name}: panel {pid} gridPos h/w/x/y must be integers")
            elif gp["x"] + gp["w"] > 24:
                fail(f"{f.name}: panel {pid} is wider than the 24-column grid")
            if p.get("type") == "row":
                continue
            if not p.get("title"):
                fail(f"{f.name}: panel {pid} has no title")
            ds = p.get("datasource", {})
            if ds.get("uid") not in uids:
                fail(f"{f.name}: panel {pid} datasource uid {ds.get('uid')!r} is not provisioned")
            if p.get("type") != "text" and not p.get("targets"):
                fail(f"{f.name}: panel {pid} has no queries")
        for p, t in dashboard_exprs(dash):
            expr = t["expr"]
            for m, v in MACROS.items():
                expr = expr.replace(m, v)
            if "$" in expr:
                fail(f"{f.name}: panel {p['id']} query uses an unknown variable: {t['expr']}")
            rules.append({"record": f"dashboard:panel_{p['id']}_{t.get('refId', 'A')}", "expr": expr})
    with open(out_path, "w") as out:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, out, sort_keys=False)
    if not ERRORS:
        ok(f"{len(dashboards)} dashboard(s), {len(rules)} queries written to {out_path}")


def write_prometheusrule(rules_path, out_path):
    """Regenerates the PrometheusRule from alerts.yml (the check rules-sync compares them)."""
    groups = load_yaml(rules_path)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "escalator", "labels": {"app.kubernetes.io/name": "escalator"}},
        "spec": {"groups": groups},
    }
    with open(out_path, "w") as f:
        f.write(
            "# GENERATED from deploy/prometheus/alerts.yml: keep spec.groups identical\n"
            "# (scripts/validate-deploy.sh fails otherwise). Regenerate with\n"
            "#   python3 deploy/validate/checks.py write-prometheusrule \\\n"
            "#     deploy/prometheus/alerts.yml deploy/k8s/base/prometheusrule.yaml\n"
        )
        yaml.dump(doc, f, Dumper=BlockDumper, sort_keys=False, width=100)
    ok(f"wrote {out_path}")


class BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL spread over lines) as literal blocks."""


BlockDumper.add_representer(
    str,
    lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None),
)


def dashboard_queries(dash_path):
    """Prints one query per line (macros replaced), for `promtool query instant`."""
    dash = json.load(open(dash_path))
    for p, t in dashboard_exprs(dash):
        expr = t["expr"]
        for m, v in MACROS.items():
            expr = expr.replace(m, v)
        print(f"{p['id']}\t{p['title']}\t{' '.join(expr.split())}")


def extract_configmap(rendered_path, name, key, out_path):
    """Writes data[key] of ConfigMap `name` from the kustomize output to out_path."""
    for o in load_all(rendered_path):
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name:
            data = (o.get("data") or {}).get(key)
            if data is None:
                break
            Path(out_path).write_text(data)
            return
    fail(f"ConfigMap {name} has no key {key}")


def am_live_config(src, out, http_port, smtp_port, secrets_dir):
    """The real alertmanager.yml, with its receivers pointed at local sinks (sinks.py) and a
    short group_wait, for the live delivery check. Routes and inhibitions are unchanged."""
    cfg = load_yaml(src)
    base = f"http://127.0.0.1:{http_port}"
    g = cfg.setdefault("global", {})
    g["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    g["pagerduty_url"] = f"{base}/pagerduty"
    cfg["route"]["group_wait"] = "1s"
    cfg["route"]["group_interval"] = "5s"
    secrets = Path(secrets_dir)
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "slack-webhook-url").write_text(f"{base}/slack\n")
    (secrets / "pagerduty-routing-key").write_text("live-check-routing-key\n")
    for r in cfg["receivers"]:
        for c in r.get("slack_configs", []):
            c["api_url_file"] = str(secrets / "slack-webhook-url")
        for c in r.get("pagerduty_configs", []):
            c["routing_key_file"] = str(secrets / "pagerduty-routing-key")
    with open(out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def secret_refs(node):
    """Every SecretKeySelector ({name, key}) under an AlertmanagerConfig spec."""
    if isinstance(node, dict):
        if set(node) == {"name", "key"}:
            yield node
        for v in node.values():
            yield from secret_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from secret_refs(v)


def am_matchers(ms):
    return [f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in ms or []]


def am_route(r):
    out = {}
    for src, dst in (("receiver", "receiver"), ("groupBy", "group_by"), ("groupWait", "group_wait"),
                     ("groupInterval", "group_interval"), ("repeatInterval", "repeat_interval"),
                     ("continue", "continue")):
        if src in r:
            out[dst] = r[src]
    if r.get("matchers"):
        out["matchers"] = am_matchers(r["matchers"])
    if r.get("routes"):
        out["routes"] = [am_route(c) for c in r["routes"]]
    return out


def amconfig_to_alertmanager(rendered_path, out, secrets_dir, compose_am=None):
    """The Alertmanager configuration the Prometheus Operator builds from the rendered
    AlertmanagerConfig: its route under the namespace matcher the operator adds, its
    receivers (Secrets as files holding their placeholder values) and inhibit rules, in
    Alertmanager 0.25 syntax for `amtool check-config` and `amtool config routes test`.
    Receiver names are left without the operator's "namespace/name/" prefix. Also checks
    that every Secret key it names exists in the base's placeholder Secret."""
    objs = load_all(rendered_path)
    amcs = [o for o in objs if o["kind"] == "AlertmanagerConfig"]
    if len(amcs) != 1:
        fail(f"expected one AlertmanagerConfig in the kustomize output, found {len(amcs)}")
        return
    amc = amcs[0]
    ns = amc["metadata"].get("namespace")
    if not ns:
        fail("AlertmanagerConfig has no namespace (the operator matches alerts on it)")
        return
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    files = Path(secrets_dir)
    files.mkdir(parents=True, exist_ok=True)

    def secret_file(ref):
        s = secrets.get(ref["name"])
        value = ((s or {}).get("stringData") or {}).get(ref["key"])
        if value is None:
            fail(f"Secret {ref['name']} has no key {ref['key']} (named by the AlertmanagerConfig)")
            value = "missing"
        f = files / f"{ref['name']}-{ref['key']}"
        f.write_text(value + "\n")
        return str(f)

    spec = amc["spec"]
    receivers = [{"name": "null"}]
    for r in spec.get("receivers", []):
        rec = {"name": r["name"]}
        for c in r.get("pagerdutyConfigs", []):
            rec.setdefault("pagerduty_configs", []).append({
                "routing_key_file": secret_file(c["routingKey"]),
                "severity": c.get("severity"), "description": c.get("description"),
                "send_resolved": c.get("sendResolved", False),
            })
        for c in r.get("slackConfigs", []):
            rec.setdefault("slack_configs", []).append({
                "api_url_file": secret_file(c["apiURL"]), "channel": c.get("channel"),
                "send_resolved": c.get("sendResolved", False),
                "title": c.get("title"), "text": c.get("text"),
            })
        for c in r.get("emailConfigs", []):
            e = {"to": c["to"], "from": c.get("from"), "smarthost": c.get("smarthost"),
                 "require_tls": c.get("requireTLS", True),
                 "send_resolved": c.get("sendResolved", False)}
            if "authPassword" in c:
                e["auth_username"] = c.get("authUsername")
                secret_file(c["authPassword"])
                e["auth_password"] = "<from the Secret>"
            rec.setdefault("email_configs", []).append(e)
        if len(rec) == 1:
            fail(f"receiver {r['name']} has no pagerduty, slack or email config")
        receivers.append(rec)
    top = am_route(spec["route"])
    top["matchers"] = [f'namespace="{ns}"'] + top.get("matchers", [])
    top["continue"] = True
    nsm = [f'namespace="{ns}"']
    cfg = {
        "route": {"receiver": "null", "routes": [top]},
        "inhibit_rules": [
            {"source_matchers": nsm + am_matchers(i.get("sourceMatch")),
             "target_matchers": nsm + am_matchers(i.get("targetMatch")),
             "equal": i.get("equal", [])}
            for i in spec.get("inhibitRules", [])
        ],
        "receivers": receivers,
    }
    with open(out, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    if compose_am:
        # the same routing and inhibitions as docker-compose's alertmanager.yml
        theirs = load_yaml(compose_am)
        mine = {k: v for k, v in top.items() if k not in ("matchers", "continue")}
        root = {k: v for k, v in theirs["route"].items()}
        if mine != root:
            fail(f"AlertmanagerConfig route differs from {compose_am}'s:\n  {mine}\n  {root}")
        inhibit = [{**i, "source_matchers": i["source_matchers"][1:],
                    "target_matchers": i["target_matchers"][1:]} for i in cfg["inhibit_rules"]]
        if inhibit != theirs.get("inhibit_rules", []):
            fail(f"AlertmanagerConfig inhibit rules differ from {compose_am}'s")
        names = sorted(r["name"] for r in receivers[1:])
        if names != sorted(r["name"] for r in theirs["receivers"]):
            fail(f"AlertmanagerConfig receivers {names} differ from {compose_am}'s")
    if not ERRORS:
        ok(f"AlertmanagerConfig {amc['metadata']['name']} as Alertmanager sees it: {out}")


def dns_log(port, log_path, seconds):
    """A stand-in DNS server on 127.0.0.1:PORT for SECONDS: logs each query's name, answers
    NXDOMAIN (what a resolver asks for is the point, not the answer)."""
    import socket
    import time

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(port)))
    s.settimeout(0.2)
    end = time.monotonic() + float(seconds)
    with open(log_path, "a") as out:
        while time.monotonic() < end:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            i, labels = 12, []
            while i < len(data) and data[i] != 0:
                n = data[i]
                labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
                i += n + 1
            out.write(".".join(labels) + "\n")
            out.flush()
            reply = bytearray(data)
            reply[2], reply[3] = 0x81, 0x83  # a response, NXDOMAIN
            s.sendto(bytes(reply), addr)


def namespace_follows(rendered_path, namespace):
    """Every namespaced object of an overlay is in `namespace`, and so is what names it inside
    a field: the alerts' routing label and the KEDA query (kustomize's `namespace:` rewrites
    neither; a second install's alerts reached production's receivers)."""
    objs = load_all(rendered_path)
    cluster_wide = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    elsewhere = sorted(
        f"{o['kind']}/{o['metadata']['name']}: {o['metadata'].get('namespace')}"
        for o in objs
        if o["kind"] not in cluster_wide and o["metadata"].get("namespace") != namespace
    )
    if elsewhere:
        fail(f"objects outside {namespace}: {elsewhere}")
    for o in objs:
        if o["kind"] == "PrometheusRule":
            for g in o["spec"]["groups"]:
                for r in g["rules"]:
                    got = r.get("labels", {}).get("namespace")
                    if "alert" in r and got != namespace:
                        fail(f"alert {r['alert']} is labelled namespace={got}, not {namespace}")
        if o["kind"] == "ScaledObject":
            for t in o["spec"]["triggers"]:
                query = t["metadata"].get("query", "")
                if f'namespace="{namespace}"' not in query:
                    fail(f"the KEDA query does not select namespace {namespace}: {query}")
    if not ERRORS:
        ok(f"{len(objs)} objects, the alerts' namespace label and the KEDA query: {namespace}")


COMMANDS = {
    "namespace-follows": namespace_follows,
    "dns-log": dns_log,
    "alert-labels": alert_labels,
    "amconfig-to-alertmanager": amconfig_to_alertmanager,
    "alert-coverage": alert_coverage,
    "alert-severities": alert_severities,
    "rules-sync": rules_sync,
    "k8s-invariants": k8s_invariants,
    "compose-invariants": compose_invariants,
    "grafana": grafana,
    "dashboard-queries": dashboard_queries,
    "write-prometheusrule": write_prometheusrule,
    "extract-configmap": extract_configmap,
    "am-live-config": am_live_config,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: checks.py {{{'|'.join(COMMANDS)}}} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
    finish()
