"""Tests of .ci/check_docker.py: it passes on the repository, and each
invariant it claims fails on a copy of the repository broken on purpose.

  python3 -m unittest discover -s .ci -p 'test_check_docker.py'
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHECKER = os.path.join(HERE, "check_docker.py")
COPY = ["CMakeLists.txt", ".dockerignore", "conf", "docker", "sql", "sidecar", ".ci/install-deps", ".ci/build"]
HAVE_COMPOSE = shutil.which("docker-compose") is not None

# (file, old text, new text, expected message part)
MUTATIONS = [
    ("docker/Dockerfile", "RUN .ci/install-deps --build", "RUN .ci/install-deps", "install-deps --build"),
    ("docker/Dockerfile", "-DSIDECAR_TESTS=OFF", "-DSIDECAR_TEST=OFF", "SIDECAR_TEST is not an option"),
    ("docker/Dockerfile", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_BUILD_TYPE=Debug", "CMAKE_BUILD_TYPE=Release"),
    ("docker/Dockerfile", "RUN .ci/install-deps --build",
     "RUN .ci/install-deps --build && apt-get install -y libfoo-dev", "cannot drift from CI"),
    ("docker/Dockerfile", "FROM debian:bookworm-slim", "FROM debian:bookworm", "bookworm-slim"),
    ("docker/Dockerfile", "USER 10001:10001", "USER root", "non-root"),
    ("docker/Dockerfile", "HEALTHCHECK", "# HEALTHCHECK", "HEALTHCHECK"),
    ("docker/Dockerfile", "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT", "STOPSIGNAL SIGTERM"),
    ("docker/Dockerfile", "    && apt-get clean \\\n", "", "apt-get clean"),
    ("docker/example-app/Dockerfile", "    && apt-get clean \\\n", "", "apt-get clean"),
    (".ci/install-deps", '"${sudo[@]}" apt-get clean', "true", "apt-get clean"),
    ("docker/compose.yaml", "./observability/prometheus.yml:", "./observability/prometheus.yaml:", "does not exist"),
    ("docker/compose.yaml", '    profiles: ["observability"]\n', "", "optional profile observability"),
    ("docker/Dockerfile", 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
     "ENTRYPOINT /usr/local/bin/docker-entrypoint.sh", "exec form"),
    ("docker/Dockerfile", 'CMD ["run", "-c", "/etc/sidecar/sidecar.json"]', "CMD run -c /etc/sidecar/sidecar.json",
     "CMD must be"),
    ("docker/Dockerfile", "COPY --from=build /staging/usr/share/kafka-sidecar/sql/ /usr/share/kafka-sidecar/sql/\n",
     "", "sql/ migrations"),
    ("docker/Dockerfile", "ARG VERSION=0.1.0", "ARG VERSION=9.9.9", "ARG VERSION"),
    ("docker/Dockerfile", "org.opencontainers.image.source=", "org.example.source=", "image.source"),
    ("docker/Dockerfile", " libmicrohttpd12 ", " ", "libmicrohttpd12"),
    ("docker/Dockerfile", "COPY sql/ sql/", "COPY sqll/ sql/", "sqll/ does not exist"),
    (".dockerignore", "!sql/\n", "", "excluded by .dockerignore"),
    ("docker/entrypoint.sh", 'exec sidecar "$@"', 'sidecar "$@"', "exec sidecar"),
    ("docker/k8s/sidecar.yaml", "restartPolicy: Always # native", "restartPolicy: OnFailure # native",
     "native sidecar"),
    ("docker/k8s/sidecar.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 8",
     "terminationGracePeriodSeconds"),
    ("docker/k8s/sidecar.yaml", "              path: /healthz\n              port: admin",
     "              path: /health\n              port: admin", "livenessProbe"),
    ("docker/k8s/sidecar.yaml", "http://127.0.0.1:9644/readyz", "http://127.0.0.1:9645/readyz", "readiness"),
    ("docker/k8s/sidecar.yaml", '"max_records": 500', '"max_records": 501', "differs from conf/docker.json"),
    ("docker/k8s/sidecar.yaml", "              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name",
     '              value: "sidecar-1"', "Pod name"),
    ("docker/k8s/sidecar.yaml", "                secretKeyRef:\n                  name: orders-app-sidecar-admin",
     "                secretKeyRef:\n                  name: nonexistent", "does not define"),
    ("docker/k8s/sidecar.yaml", "                path: pg_dsn", "                path: dsn", "Secret"),
    ("docker/k8s/sidecar.yaml", 'value: "http://127.0.0.1:8080/ingest"', 'value: "http://app:8080/ingest"',
     "app container in the Pod"),
    ("docker/k8s/sidecar.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
     "readOnlyRootFilesystem"),
    ("docker/k8s/sidecar.yaml", "            - name: SIDECAR_SHUTDOWN_TIMEOUT_MS # raise together with terminationGracePeriodSeconds\n"
     '              value: "8000"',
     "            - name: SIDECAR_SHUTDOWN_TIMEOUT_MS\n              value: \"29000\"", "terminationGracePeriodSeconds"),
    ("docker/k8s/sidecar.yaml", "          resources:\n            requests:\n              cpu: 100m",
     "          resouces:\n            requests:\n              cpu: 100m", "unknown field 'resouces'"),
    ("conf/docker.json", '"listen": "${SIDECAR_ADMIN_LISTEN:-0.0.0.0:9644}"',
     '"listen": "${SIDECAR_ADMIN_LISTEN:-127.0.0.1:9644}"', "0.0.0.0"),
]

COMPOSE_MUTATIONS = [
    ("docker/compose.yaml", "stop_grace_period: 10s", "stop_grace_period: 5s", "stop_grace_period"),
    ("docker/compose.yaml", 'SIDECAR_SHUTDOWN_TIMEOUT_MS: "8000"', 'SIDECAR_SHUTDOWN_TIMEOUT_MS: "12000"',
     "stop_grace_period"),
    ("docker/compose.yaml", 'KAFKA_PROCESS_ROLES: "broker,controller"', 'KAFKA_PROCESS_ROLES: "broker"',
     "KAFKA_PROCESS_ROLES"),
    ("docker/compose.yaml", 'KAFKA_CONTROLLER_QUORUM_VOTERS: "1@kafka:9093"',
     'KAFKA_CONTROLLER_QUORUM_VOTERS: "2@kafka:9093"', "QUORUM_VOTERS"),
    ("docker/compose.yaml", 'CLUSTER_ID: "NGpBjdLnVCelCyTvNrZPWg"', 'CLUSTER_ID: "demo"', "CLUSTER_ID"),
    ("docker/compose.yaml", "        condition: service_completed_successfully",
     "        condition: service_started", "producer: condition: service_completed_successfully"),
    ("docker/compose.yaml", "  sidecar:\n    build:", "  sidecar:\n    hostname: sidecar\n    build:",
     "hostname"),
    ("docker/compose.yaml", 'SIDECAR_MIGRATE: "1"', 'SIDECAR_MIGRATE: "0"', "SIDECAR_MIGRATE"),
    ("docker/compose.yaml", "      - pg_dsn # read by", "      - pg_password # read by", "add the secret pg_dsn"),
    ("docker/compose.yaml", "      APP_URL: http://app:8080/ingest", "      APP_URL: http://localhost:8080/ingest",
     "app service"),
    ("docker/compose.yaml", "    healthcheck:\n      # Over TCP", "    x-healthcheck:\n      # Over TCP",
     "no healthcheck"),
    ("docker/secrets/pg_password", "sidecar-demo-password", "other-password", "pg_dsn does not match"),
]


class CheckDockerTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="check-docker-test-")
        for path in COPY:
            src, dst = os.path.join(ROOT, path), os.path.join(self.dir, path)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_checker(self, compose=True):
        args = [sys.executable, CHECKER, "check"]
        if compose and HAVE_COMPOSE:
            out = os.path.join(self.dir, "compose-config.yaml")
            env = {k: v for k, v in os.environ.items() if k not in ("APP_TOKEN", "SIDECAR_ADMIN_TOKEN")}
            with open(out, "w") as f:
                p = subprocess.run(["docker-compose", "-f", os.path.join(self.dir, "docker/compose.yaml"), "config"],
                                   stdout=f, stderr=subprocess.PIPE, text=True, env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
            args += ["--compose-config", out]
        p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, CHECK_DOCKER_ROOT=self.dir))
        return p.returncode, p.stderr + p.stdout

    def mutate(self, path, old, new):
        full = os.path.join(self.dir, path)
        with open(full) as f:
            text = f.read()
        self.assertIn(old, text, "the mutation no longer applies to %s" % path)
        with open(full, "w") as f:
            f.write(text.replace(old, new, 1))

    def test_repository_passes(self):
        rc, out = self.run_checker()
        self.assertEqual(rc, 0, out)

    def test_each_broken_invariant_is_reported(self):
        for path, old, new, expect in MUTATIONS:
            with self.subTest(path=path, new=new):
                self.tearDown()
                self.setUp()
                self.mutate(path, old, new)
                rc, out = self.run_checker(compose=False)
                self.assertEqual(rc, 1, out)
                self.assertIn(expect, out)

    @unittest.skipUnless(HAVE_COMPOSE, "docker-compose is not installed")
    def test_each_broken_compose_invariant_is_reported(self):
        for path, old, new, expect in COMPOSE_MUTATIONS:
            with self.subTest(path=path, new=new):
                self.tearDown()
                self.setUp()
                self.mutate(path, old, new)
                rc, out = self.run_checker()
                self.assertEqual(rc, 1, out)
                self.assertIn(expect, out)


if __name__ == "__main__":
    unittest.main()
