//! Every built-in resource the API serves takes a realistic object through kubectl and
//! prints the columns Kubernetes prints for it.

use skiff_tests::{TestCluster, assert_matches};

/// (manifest, `kubectl get` arguments, expected header, expected row) per kind.
const KINDS: &[(&str, &[&str], &str, &str)] = &[
    (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b}\n",
        &["get", "secret", "s"],
        r"^NAME +TYPE +DATA +AGE",
        r"^s +Opaque +1 +",
    ),
    (
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n",
        &["get", "sa", "robot"],
        r"^NAME +SECRETS +AGE",
        r"^robot +0 +",
    ),
    (
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv1}\nspec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], hostPath: {path: /tmp/pv1}}\n",
        &["get", "pv", "pv1"],
        r"^NAME +CAPACITY +ACCESS MODES +RECLAIM POLICY +STATUS",
        r"^pv1 +1Gi +RWO +Retain +Pending",
    ),
    (
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n",
        &["get", "pvc", "data"],
        r"^NAME +STATUS +VOLUME +CAPACITY",
        r"^data +Pending +",
    ),
    (
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec: {hard: {pods: \"10\"}}\n",
        &["get", "quota", "q"],
        // The quota controller (not yet running) fills status.hard/used, which the
        // REQUEST and LIMIT columns show.
        r"^NAME +AGE +REQUEST +LIMIT",
        r"^q +\d+s +$",
    ),
    (
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: l}\nspec: {limits: [{type: Container, default: {cpu: 500m}}]}\n",
        &["get", "limits", "l"],
        r"^NAME +CREATED AT",
        r"^l +",
    ),
    (
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs1}\nspec:\n  replicas: 2\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: busybox}]}}\n",
        &["get", "rs", "rs1"],
        r"^NAME +DESIRED +CURRENT +READY +AGE",
        // CURRENT: 2 once the replicaset controller has made the pods.
        r"^rs1 +2 +[02] +0 +",
    ),
    (
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: ds1}\nspec:\n  selector: {matchLabels: {a: d}}\n  template: {metadata: {labels: {a: d}}, spec: {nodeSelector: {disk: ssd}, containers: [{name: c, image: busybox}]}}\n",
        &["get", "ds", "ds1"],
        r"^NAME +DESIRED +CURRENT +READY +UP-TO-DATE +AVAILABLE +NODE SELECTOR",
        r"^ds1 +0 +0 +0 +0 +0 +disk=ssd +",
    ),
    (
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  replicas: 3\n  selector: {matchLabels: {a: s}}\n  template: {metadata: {labels: {a: s}}, spec: {containers: [{name: c, image: busybox}]}}\n  volumeClaimTemplates: [{metadata: {name: data}, spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}]\n",
        &["get", "sts", "db"],
        r"^NAME +READY +AGE",
        r"^db +0/3 +",
    ),
    (
        "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata: {name: db-1}\nrevision: 1\ndata: {spec: {}}\n",
        &["get", "controllerrevisions", "db-1"],
        r"^NAME +CONTROLLER +REVISION +AGE",
        r"^db-1 +<none> +1 +",
    ),
    (
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  template: {spec: {restartPolicy: Never, containers: [{name: pi, image: busybox, command: [echo, \"3.14\"]}]}}\n",
        &["get", "job", "pi"],
        r"^NAME +STATUS +COMPLETIONS +DURATION +AGE",
        r"^pi +Running +0/1 +",
    ),
    (
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: \"*/1 * * * *\"\n  suspend: true\n  jobTemplate: {spec: {template: {spec: {restartPolicy: OnFailure, containers: [{name: c, image: busybox}]}}}}\n",
        &["get", "cj", "tick"],
        r"^NAME +SCHEDULE +TIMEZONE +SUSPEND +ACTIVE +LAST SCHEDULE +AGE",
        // Suspended, so that a minute passing can't make a job.
        r"^tick +\*/1 \* \* \* \* +<none> +True +0 +<none> +",
    ),
    (
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 5\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]\n",
        &["get", "hpa", "web"],
        r"^NAME +REFERENCE +TARGETS +MINPODS +MAXPODS +REPLICAS +AGE",
        r"^web +Deployment/web +cpu: <unknown>/50% +1 +5 +0 +",
    ),
    (
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: leader}\nspec: {holderIdentity: me, leaseDurationSeconds: 15}\n",
        &["get", "lease", "leader"],
        r"^NAME +HOLDER +AGE",
        r"^leader +me +",
    ),
    (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\nrules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list]}]\n",
        &["get", "role", "reader"],
        r"^NAME +CREATED AT",
        r"^reader +",
    ),
    (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: read}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]\n",
        &["get", "rolebinding", "read", "-o", "wide"],
        r"^NAME +ROLE +AGE +USERS",
        r"^read +Role/reader +\S+ +alice",
    ),
    (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"system:viewer\"}\nrules: [{apiGroups: [\"*\"], resources: [\"*\"], verbs: [get]}]\n",
        &["get", "clusterrole", "system:viewer"],
        r"^NAME +CREATED AT",
        r"^system:viewer +",
    ),
    (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: \"system:viewer\"}\nsubjects: [{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]\n",
        &["get", "clusterrolebinding", "view"],
        r"^NAME +ROLE +AGE",
        r"^view +ClusterRole/system:viewer +",
    ),
    (
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local, annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}}\nprovisioner: skiff.dev/local\n",
        &["get", "sc"],
        r"^NAME +PROVISIONER +RECLAIMPOLICY +VOLUMEBINDINGMODE",
        r"^local \(default\) +skiff\.dev/local +Delete +Immediate +false +",
    ),
    (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-abc, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 80}]\nendpoints: [{addresses: [10.244.0.5]}]\n",
        &["get", "endpointslices", "web-abc"],
        r"^NAME +ADDRESSTYPE +PORTS +ENDPOINTS +AGE",
        r"^web-abc +IPv4 +80 +10\.244\.0\.5 +",
    ),
    (
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec: {minAvailable: 1, selector: {matchLabels: {app: web}}}\n",
        &["get", "pdb", "web"],
        r"^NAME +MIN AVAILABLE +MAX UNAVAILABLE +ALLOWED DISRUPTIONS +AGE",
        r"^web +1 +N/A +0 +",
    ),
    (
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n",
        &["get", "pc", "high"],
        r"^NAME +VALUE +GLOBAL-DEFAULT +AGE",
        r"^high +1000 +false +",
    ),
];

#[test]
fn every_built_in_kind_applies_and_prints_its_columns() {
    let c = TestCluster::start().unwrap();
    let k = c.kubectl();
    for (manifest, get, header, row) in KINDS {
        let run = k.run_stdin(&["apply", "-f", "-"], manifest);
        assert_eq!(run.code, 0, "applying:\n{manifest}\n{}", run.stderr);
        let out = k.ok(get);
        assert_matches(&out, header);
        assert_matches(&out, row);
        // And a second apply changes nothing: kubectl finds nothing to patch. Except, as in
        // Kubernetes, where an atomic list gets server defaults (a StatefulSet's
        // volumeClaimTemplates get volumeMode, an EndpointSlice's ports get protocol): the live
        // list differs from the manifest's, so kubectl resends it.
        let again = k.run_stdin(&["apply", "-f", "-"], manifest);
        let resent = ["kind: StatefulSet", "kind: EndpointSlice"];
        let expected = if resent.iter().any(|k| manifest.contains(k)) {
            "configured"
        } else {
            "unchanged"
        };
        assert_matches(&again.stdout, expected);
    }
}
