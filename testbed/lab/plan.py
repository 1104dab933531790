"""The lab's commands as plans: ordered steps, each one command line (or one small local action).

A plan is data, so `--dry-run` prints exactly what a real run would execute, and tests can
inspect it without Docker. Readiness is part of the plan: `kubectl wait`/`rollout status`
steps, and polls that repeat a command until its output says ready.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed.lab import ingress as ING
from testbed.lab import layout as L
from testbed.lab.ingress import Ingress
from testbed.lab.subscribers import Subscriber
from testbed.lab.versions import release_manifests

TOKEN_FILE = L.COMPOSE_DIR / "secrets" / "detector-token"


class StepError(RuntimeError):
    """A local action failed; the message is the one line the runner prints."""


@dataclass
class Step:
    title: str
    argv: list[str] | None = None
    action: Callable[[], None] | None = None     # a local action instead of a command
    show: str = ""                               # what --dry-run prints for an action or for stdin
    stdin: Callable[[], str] | None = None
    poll: float = 0.0                            # > 0: retry every few seconds for this long
    until: Callable[[str], bool] | None = None   # with poll: ready when this holds for stdout
    may_fail: bool = False                       # status-style steps: report and go on
    skip_if: Callable[[], bool] | None = None    # checked at run time only
    skip_note: str = ""
    requires: list[Path] = field(default_factory=list)

    def command_text(self) -> str:
        if self.argv is None:
            return self.show
        text = shlex.join(self.argv)
        if self.stdin is not None:
            text += f"  <<< {self.show}"
        return text


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(L.REPO))
    except ValueError:
        return str(p)


def compose_cmd(with_tap: bool) -> list[str]:
    argv = ["docker", "compose", "--project-directory", _rel(L.COMPOSE_DIR),
            "-f", _rel(L.COMPOSE_DIR / "docker-compose.yaml")]
    if with_tap:
        argv += ["-f", _rel(L.COMPOSE_DIR / "docker-compose.tap.yaml")]
    return argv


def kubectl(*args: str) -> list[str]:
    return ["kubectl", "--context", f"kind-{L.CLUSTER}", *args]


def function_images(knative_dir: Path = L.K8S_DIR / "knative") -> list[tuple[str, str]]:
    """(function module, image) for each Knative Service image built from this repository.

    The image tag is the one the Service names (the lab builds it from
    docker/function.Dockerfile with FUNCTION=<module> and `kind load`s it); a Service image
    `<registry>/<path>/fn-<name>:<tag>` runs testbed/functions/<name>.py (dashes as
    underscores). Images of other projects are left to the cluster to pull.
    """
    from testbed.broker.runner import function_for_image
    from testbed.lab.checks import manifest_files, pod_images, yaml_documents

    found: dict[str, str] = {}
    for f in manifest_files(knative_dir):
        for _, doc in yaml_documents(f):
            if doc.get("kind") != "Service" or not str(doc.get("apiVersion", "")).startswith("serving.knative.dev/"):
                continue
            for image in pod_images(doc):
                module = function_for_image(image)
                if module:
                    found.setdefault(image, module)
    return sorted(((m, img) for img, m in found.items()), key=lambda x: x[1])


def _registry(image: str) -> str:
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "index.docker.io"


def _cluster_exists() -> bool:
    import subprocess
    try:
        out = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return L.CLUSTER in out.split()


def _write_token() -> None:
    if TOKEN_FILE.is_file() and TOKEN_FILE.read_text().strip():
        return
    TOKEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    TOKEN_FILE.write_text(secrets.token_urlsafe(32) + "\n")
    TOKEN_FILE.chmod(0o644)    # read by the tap's non-root user through a bind-mounted compose secret


def _token_secret() -> str:
    token = TOKEN_FILE.read_text().strip()
    return json.dumps({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "detector-token", "namespace": L.NAMESPACE},
        "type": "Opaque", "stringData": {"token": token},
    })


def ues_healthy(ps_json: str, subs: list[Subscriber]) -> bool:
    """True when `docker compose ps --format json` shows every UE service healthy."""
    rows: list[dict[str, object]] = []
    for line in ps_json.splitlines():      # one JSON object per line (compose >= 2.21) or one array
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return False
        rows += data if isinstance(data, list) else [data]
    health = {str(r.get("Service")): str(r.get("Health", "")) for r in rows if isinstance(r, dict)}
    return all(health.get(f"ue{s.n}") == "healthy" for s in subs)


def up_plan(versions: dict[str, str], subs: list[Subscriber], *, k8s: bool = True,
            compose: bool = True, timeout: int = 300, ingress: Ingress = ING.DEFAULT) -> list[Step]:
    rel = release_manifests(versions, ingress.name)
    t = f"--timeout={timeout}s"
    steps: list[Step] = []
    if k8s:
        steps.append(Step("tap <-> detector ingest token", action=_write_token,
                          show=f"write {_rel(TOKEN_FILE)} (random, kept if present)"))
        steps.append(Step(f"kind cluster {L.CLUSTER} (Kubernetes v1.34)",
                          ["kind", "create", "cluster", "--config", _rel(L.KIND_CONFIG), "--wait", f"{timeout}s"],
                          skip_if=_cluster_exists, skip_note="cluster exists"))
        if ingress is not ING.KOURIER:
            # clusters made before --ingress existed run Kourier: stop before installing a second
            # ingress into one (Kourier's own plan is left as it was)
            steps.append(ingress_guard_step(ingress))
        steps += [
            Step("Knative Serving CRDs", kubectl("apply", "-f", rel["serving-crds"])),
            Step("Serving CRDs established", kubectl("wait", "--for=condition=Established", "crd",
                                                     "-l", "knative.dev/crd-install=true", t)),
            Step("Knative Serving core", kubectl("apply", "-f", rel["serving-core"])),
            *ingress_install_steps(ingress, rel, t),
            Step(_SERVING_READY[ingress.name], kubectl("wait", "--for=condition=Available", "deployment", "--all",
                                                       "-n", "knative-serving", t)),
            *ingress_ready_steps(ingress, t),
            # ConfigMaps in knative-serving pass the config.webhook.serving.knative.dev validating
            # webhook (failurePolicy: Fail, knative/serving#13665): patch only once Serving is
            # Available, and retry while the webhook's endpoints come up
            configmap_patch(f"Serving uses {ingress.title}", "config-network",
                            {"ingress-class": ingress.ingress_class}),
            configmap_patch("Knative Service URLs on 127.0.0.1.sslip.io", "config-domain",
                            {"127.0.0.1.sslip.io": ""}),
            gateway_nodeport_step(ingress),
            Step("Knative Eventing CRDs", kubectl("apply", "-f", rel["eventing-crds"])),
            Step("Eventing CRDs established", kubectl("wait", "--for=condition=Established", "crd",
                                                      "-l", "knative.dev/crd-install=true", t)),
            Step("Knative Eventing core", kubectl("apply", "-f", rel["eventing-core"])),
            Step("In-memory channel", kubectl("apply", "-f", rel["in-memory-channel"])),
            Step("MT channel broker", kubectl("apply", "-f", rel["mt-channel-broker"])),
            Step("Eventing ready", kubectl("wait", "--for=condition=Available", "deployment", "--all",
                                           "-n", "knative-eventing", t)),
            Step(f"Broker ingress on NodePort {L.BROKER_NODEPORT}",
                 kubectl("apply", "-f", _rel(L.K8S_DIR / "install/broker-ingress-nodeport.yaml"))),
            Step("build the detector image", ["docker", "build", "-f", "docker/detector.Dockerfile",
                                              "-t", L.DETECTOR_IMAGE, "."]),
            kind_load_step("load the detector image into kind", L.DETECTOR_IMAGE),
        ]
        fn_images = function_images()
        for module, img in fn_images:
            steps += [
                Step(f"build function {module}", ["docker", "build", "-f", "docker/function.Dockerfile",
                                                  "--build-arg", f"FUNCTION={module}", "-t", img, "."]),
                kind_load_step(f"load function {module} into kind", img),
            ]
        # Knative resolves tags to digests by asking the registry; kind-loaded images are in no registry
        skip = ["kind.local", "ko.local", "dev.local"]
        skip += sorted({_registry(img) for _, img in fn_images} - set(skip))
        steps.append(configmap_patch("Knative: no tag resolution for the lab's own images", "config-deployment",
                                     {"registries-skipping-tag-resolving": ",".join(skip)}))
        knative_dir = L.K8S_DIR / "knative"
        steps += [
            Step(f"namespace {L.NAMESPACE}", kubectl("apply", "-f", _rel(L.K8S_DIR / "detector/00-namespace.yaml"))),
            Step("detector-token Secret", kubectl("apply", "-f", "-"), stdin=_token_secret,
                 show=f"Secret detector-token from {_rel(TOKEN_FILE)}"),
            Step("Broker, Triggers and functions (k8s/knative/)",
                 kubectl("apply", "-R", "-f", _rel(knative_dir)), requires=[knative_dir]),
            Step(f"Broker {L.BROKER} ready", kubectl("wait", "--for=condition=Ready", f"broker/{L.BROKER}",
                                                     "-n", L.NAMESPACE, t)),
            Step("functions ready", kubectl("wait", "--for=condition=Ready", "ksvc", "--all", "-n", L.NAMESPACE, t)),
            Step("Triggers ready", kubectl("wait", "--for=condition=Ready", "trigger", "--all", "-n", L.NAMESPACE, t)),
            Step("detector (SinkBinding -> Broker, Deployment, NodePort)",
                 kubectl("apply", "-f", _rel(L.K8S_DIR / "detector"))),
            Step("detector rolled out", kubectl("rollout", "status", "deployment/detector", "-n", L.NAMESPACE, t)),
            Step("SinkBinding ready", kubectl("wait", "--for=condition=Ready", "sinkbinding/detector",
                                              "-n", L.NAMESPACE, t)),
        ]
    if compose:
        base, full = compose_cmd(with_tap=False), compose_cmd(with_tap=True)
        steps += [
            Step("build the lab images (tap, DN DNS)", [*(full if k8s else base), "build"]),
            # the base file alone, so this step means the same on a first run and on a re-run; the
            # tap file adds services only and never changes `upf`, whose config hash Compose compares
            # to decide on recreating it (docker/compose pkg/compose/convergence.go mustRecreate)
            # no --remove-orphans with the tap: it would remove the running tap services
            Step("5G core, RAN, UEs and DN", [*base, "up", "-d", *([] if k8s else ["--remove-orphans"])]),
            Step(f"wait until the {len(subs)} UE(s) have a PDU session", [*base, "ps", "--format", "json"],
                 poll=float(timeout), until=lambda out: ues_healthy(out, subs)),
        ]
        steps += [data_path_step(s, timeout=min(timeout, 60)) for s in subs]
        if k8s:
            steps += [
                Step(f"UPF joins Docker network {L.KIND_NETWORK} (no restart: live sessions stay up)",
                     action=connect_upf_to_kind, show=f"docker network connect {L.KIND_NETWORK} "
                     f"$({shlex.join([*base, 'ps', '-q', 'upf'])})   # skipped if already connected"),
                Step("tap on N3/N4 and N6 (in the UPF's network namespace)",
                     [*full, "up", "-d", "tap", "tap-n6"]),
            ]
    return steps


def configmap_patch(title: str, name: str, data: dict[str, str], retry_s: float = 120.0) -> Step:
    """A merge patch of a ConfigMap in knative-serving, retried while the config webhook is not serving."""
    return Step(title, kubectl("patch", f"configmap/{name}", "-n", "knative-serving", "--type", "merge",
                               "-p", json.dumps({"data": data}, separators=(",", ":"))), poll=retry_s)


# net-istio's controller and webhook run in knative-serving, so Serving's wait covers them
_SERVING_READY = {"kourier": "Serving ready", "istio": "Serving and net-istio ready"}


def ingress_install_steps(ingress: Ingress, rel: dict[str, str], t: str) -> list[Step]:
    """Apply the ingress, after serving-core (its objects in knative-serving need the namespace)."""
    if ingress is ING.KOURIER:
        return [Step("Kourier", kubectl("apply", "-f", rel["kourier"]))]
    # Istio first, with its CRDs Established and istiod + gateway Available (Knative's documented
    # order), then net-istio, whose Gateways and PeerAuthentications are Istio custom resources. One
    # apply of the Istio manifest: it holds no Istio custom resources, and its CRDs do not carry
    # knative.dev/crd-install, so the documented `kubectl apply -l knative.dev/crd-install=true`
    # would select nothing and fail ("no objects passed to apply")
    ns = ingress.gateway_namespace
    return [
        Step("Istio (CRDs, istiod, ingress gateway)", kubectl("apply", "-f", rel["istio"])),
        Step("Istio CRDs established", kubectl("wait", "--for=condition=Established", "crd",
                                               "-l", ING.ISTIO_CRD_SELECTOR, t)),
        Step("Istio ready", kubectl("wait", "--for=condition=Available", "deployment", "--all", "-n", ns, t)),
        Step("net-istio (Knative's Istio ingress)", kubectl("apply", "-f", rel["net-istio"])),
    ]


def ingress_ready_steps(ingress: Ingress, t: str) -> list[Step]:
    """Waits after Serving's: Kourier's gateway (net-istio's deployments are in knative-serving)."""
    if ingress is ING.KOURIER:
        return [Step("Kourier ready", kubectl("wait", "--for=condition=Available", "deployment", "--all",
                                              "-n", ingress.gateway_namespace, t))]
    return []


def gateway_nodeport_step(ingress: Ingress) -> Step:
    """The gateway's HTTP port on the NodePort kind maps to the host. A strategic merge patch (kubectl's
    default for Services): ports merge by `port`, so the gateway's other ports stay."""
    port = {"port": ingress.gateway_http_port, "nodePort": L.INGRESS_NODEPORT}
    body = {"spec": {"type": "NodePort", "ports": [port]}}
    return Step(f"{ingress.title} on NodePort {L.INGRESS_NODEPORT}", kubectl(
        "patch", f"service/{ingress.gateway_service}", "-n", ingress.gateway_namespace,
        "-p", json.dumps(body, separators=(",", ":"))))


def _ingress_class_argv() -> list[str]:
    return kubectl("get", "configmap/config-network", "-n", "knative-serving",
                   "-o", 'jsonpath={.data.ingress-class}{"\\n"}')


def ingress_guard_step(ingress: Ingress) -> Step:
    """Stop before installing anything when the cluster already runs another Knative ingress."""
    import subprocess

    def check() -> None:
        argv = _ingress_class_argv()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            if "NotFound" in p.stderr:          # a new cluster: no Serving yet
                return
            raise StepError(f"{shlex.join(argv[:4])}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
        why = ING.conflict(p.stdout, ingress)
        if why:
            raise StepError(why)

    return Step(f"the cluster runs no other Knative ingress than {ingress.title}", action=check,
                show=f"{shlex.join(_ingress_class_argv())}   # empty or {ingress.ingress_class}")


def kind_load_step(title: str, image: str) -> Step:
    from testbed.lab import kindload

    def load() -> None:
        how = kindload.load_image(image, L.CLUSTER, log=lambda s: print(s, file=sys.stderr))
        print(f"    loaded {image} ({how})", file=sys.stderr)

    return Step(title, action=load, show=kindload.describe(image, L.CLUSTER))


def data_path_probe() -> list[str]:
    """A request from the UE, out of its PDU session (uesimtun0), to the DN's main application."""
    return ["curl", "-sS", "--fail", "--max-time", "3", "--interface", "uesimtun0", "-o", "/dev/null",
            "-w", "%{http_code}", f"http://{L.ADDR['app']['n6']}:{L.APP_PORT}/healthz"]


def data_path_step(sub: Subscriber, *, timeout: int) -> Step:
    """Proves the user plane, not only an address: UE -> gNB -> N3 -> UPF -> N6 -> app, answered."""
    ue = f"ue{sub.n}"
    return Step(f"{ue} ({sub.ip}) reaches the main application through the UPF",
                [*compose_cmd(with_tap=False), "exec", "-T", ue, *data_path_probe()],
                poll=float(timeout), until=lambda out: out.strip() == "200")


def upf_networks(inspect_json: str) -> set[str]:
    """Network names of a container from `docker inspect -f '{{json .NetworkSettings.Networks}}'`."""
    try:
        nets = json.loads(inspect_json or "{}")
    except json.JSONDecodeError:
        return set()
    return set(nets) if isinstance(nets, dict) else set()


def connect_upf_to_kind() -> None:
    import subprocess

    def run(argv: list[str]) -> str:
        p = subprocess.run(argv, cwd=L.REPO, capture_output=True, text=True)
        if p.returncode != 0:
            raise StepError(f"{shlex.join(argv[:4])}: {(p.stderr or p.stdout).strip() or f'exit {p.returncode}'}")
        return p.stdout.strip()

    cid = run([*compose_cmd(with_tap=False), "ps", "-q", "upf"])
    if not cid:
        raise StepError("the upf container is not running")
    if L.KIND_NETWORK in upf_networks(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid])):
        print(f"    already on {L.KIND_NETWORK}", file=sys.stderr)
        return
    run(["docker", "network", "connect", L.KIND_NETWORK, cid])


def down_plan(*, keep_cluster: bool = False) -> list[Step]:
    # the base file alone: --remove-orphans takes the tap services too, and down does not
    # depend on kind's network still existing
    steps = [Step("stop and remove the Compose lab", [*compose_cmd(with_tap=False), "down", "--volumes",
                                                      "--remove-orphans"], may_fail=True)]
    if not keep_cluster:
        steps.append(Step(f"delete kind cluster {L.CLUSTER}", ["kind", "delete", "cluster", "--name", L.CLUSTER]))
    return steps


def status_plan(ingress: Ingress = ING.DEFAULT) -> list[Step]:
    return [
        Step("Compose services", [*compose_cmd(with_tap=False), "ps", "--all"], may_fail=True),
        Step("kind nodes", kubectl("get", "nodes", "-o", "wide"), may_fail=True),
        Step("Knative ingress class (config-network)", _ingress_class_argv(), may_fail=True),
        Step(f"{ingress.title} gateway", kubectl("get", "deployment,service", "-n", ingress.gateway_namespace),
             may_fail=True),
        Step("Knative objects", kubectl("get", "broker,trigger,ksvc,sinkbinding", "-n", L.NAMESPACE),
             may_fail=True),
        Step("detector", kubectl("get", "deployment,service,pod", "-l", "app=detector", "-n", L.NAMESPACE),
             may_fail=True),
    ]


def smoke_plan(sub: Subscriber, *, timeout: int = 120, scenario: Path | None = None) -> list[Step]:
    dc = compose_cmd(with_tap=True)
    ue = f"ue{sub.n}"
    app = L.ADDR["app"]["n6"]
    dns = L.ADDR["dns"]["n6"]
    steps = [
        Step(f"{ue} resolves {L.APP_HOST} through its PDU session",
             [*dc, "exec", "-T", ue, "dig", "+short", "+time=3", "+tries=1", "-b", sub.ip, f"@{dns}", L.APP_HOST],
             poll=30.0, until=lambda out: app in out.split()),
        Step(f"{ue} clicks 'buy' in the main application (HTTP over N3/N6)",
             [*dc, "exec", "-T", ue, "curl", "-sS", "--fail", "--max-time", "10", "--interface", "uesimtun0",
              "-H", f"Host: {L.APP_HOST}", "-X", "POST", f"http://{app}/api/v1/buy?item=3"]),
        Step(f"a function logs {sub.supi} (tap -> detector -> Broker -> Trigger -> function)",
             kubectl("logs", "-n", L.NAMESPACE, "-l", "serving.knative.dev/service", "--all-containers",
                     "--prefix", "--tail=500", "--max-log-requests=20"),
             poll=float(timeout), until=lambda out: sub.supi in out),
    ]
    if scenario is not None:
        steps.append(Step(f"scenario {scenario}", [sys.executable, "-m", "testbed", "scenario", "run",
                                                   str(scenario), "--backend", "lab"], requires=[scenario]))
    return steps
