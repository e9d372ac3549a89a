"""The official Kubernetes Python client against skiff: CRUD, selectors, patches, status,
a watch, and the errors it raises. Exits non-zero (with a traceback) on any failure."""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "pyclient"

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
assert ns in [n.metadata.name for n in core.list_namespace().items]

# Watch configmaps from the namespace's current revision, in a thread.
start_rv = core.list_namespaced_config_map(ns).metadata.resource_version
seen = []
ready = threading.Event()


def watch_configmaps():
    w = watch.Watch()
    ready.set()
    for event in w.stream(core.list_namespaced_config_map, ns, resource_version=start_rv, timeout_seconds=20):
        seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.resource_version))
        if event["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watch_configmaps)
t.start()
ready.wait()

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg", labels={"app": "py"}), data={"a": "1"})
created = core.create_namespaced_config_map(ns, cm)
assert created.metadata.uid and created.metadata.resource_version
try:
    core.create_namespaced_config_map(ns, cm)
    raise AssertionError("a second create must fail")
except ApiException as e:
    assert e.status == 409, e

got = core.read_namespaced_config_map("cfg", ns)
assert got.data == {"a": "1"}
assert [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="app=py").items] == ["cfg"]
assert core.list_namespaced_config_map(ns, label_selector="app=nope").items == []
assert [c.metadata.name for c in core.list_config_map_for_all_namespaces(field_selector="metadata.name=cfg").items] == ["cfg"]

patched = core.patch_namespaced_config_map("cfg", ns, {"data": {"b": "2"}})
assert patched.data == {"a": "1", "b": "2"}
patched.data["c"] = "3"
replaced = core.replace_namespaced_config_map("cfg", ns, patched)
assert replaced.data == {"a": "1", "b": "2", "c": "3"}
stale = patched
stale.data["d"] = "4"
try:
    core.replace_namespaced_config_map("cfg", ns, stale)
    raise AssertionError("a stale resourceVersion must conflict")
except ApiException as e:
    assert e.status == 409, e

try:
    core.read_namespaced_config_map("nope", ns)
    raise AssertionError("reading a missing object must fail")
except ApiException as e:
    assert e.status == 404, e

# A deployment: generation follows the spec, status goes through /status.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    ),
)
d = apps.create_namespaced_deployment(ns, dep)
assert d.metadata.generation == 1
assert d.spec.strategy.type == "RollingUpdate"
d = apps.patch_namespaced_deployment_status("web", ns, {"status": {"replicas": 2, "observedGeneration": 1}})
assert d.status.replicas == 2 and d.metadata.generation == 1
d = apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 5}})
assert d.spec.replicas == 5
assert apps.read_namespaced_deployment("web", ns).metadata.generation == 2

core.delete_namespaced_config_map("cfg", ns)
t.join(timeout=20)
kinds = [s[0] for s in seen]
assert kinds == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"], seen
revisions = [int(s[2]) for s in seen]
assert revisions == sorted(revisions), seen
print("python client: ok")
