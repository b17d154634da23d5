"""Apache Kafka broker jars, resolved with Maven and cached outside the work tree.

Layout: ``<cache>/kafka/<version>/jars/*.jar`` plus ``manifest.json`` (name, size, sha256 of
every jar). The directory is built under a temporary name and renamed into place only after
Maven succeeded and the manifest is written, and the manifest is checked before every use, so
an interrupted or corrupted download is never taken for a good one.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from schemas.files import file_sha256 as _sha256

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # same log4j2 as the broker depends on; adds the slf4j binding
MANIFEST = "manifest.json"

POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>relstream.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <!-- the broker logs through slf4j 1.7; without a binding it would log nothing -->
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


class JarCacheError(RuntimeError):
    pass


def cache_root() -> Path:
    env = os.environ.get("RELSTREAM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "relstream"


def kafka_home(version: str = KAFKA_VERSION, root: Path | None = None) -> Path:
    return (root or cache_root()) / "kafka" / version




def write_manifest(jar_dir: Path, version: str) -> dict:
    jars = sorted(p for p in jar_dir.iterdir() if p.suffix == ".jar")
    manifest = {
        "kafka_version": version,
        "jars": [{"name": p.name, "size": p.stat().st_size, "sha256": _sha256(p)} for p in jars],
    }
    (jar_dir.parent / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(home: Path, version: str) -> list[str]:
    """Problems with the cached jars (empty list = good)."""
    manifest_path = home / MANIFEST
    jar_dir = home / "jars"
    if not manifest_path.is_file():
        return [f"{manifest_path} missing"]
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["jars"]
    except (json.JSONDecodeError, KeyError) as exc:
        return [f"{manifest_path} unreadable: {exc}"]
    problems = []
    if manifest.get("kafka_version") != version:
        problems.append(f"manifest is for Kafka {manifest.get('kafka_version')}, want {version}")
    if not any(e["name"] == f"kafka_2.13-{version}.jar" for e in entries):
        problems.append(f"kafka_2.13-{version}.jar not in manifest")
    listed = {e["name"] for e in entries}
    present = {p.name for p in jar_dir.glob("*.jar")} if jar_dir.is_dir() else set()
    for extra in sorted(present - listed):
        problems.append(f"unexpected jar {extra}")
    for entry in entries:
        path = jar_dir / entry["name"]
        if not path.is_file():
            problems.append(f"{entry['name']} missing")
        elif path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            problems.append(f"{entry['name']} does not match its checksum")
    return problems


def ensure_kafka_jars(version: str = KAFKA_VERSION, root: Path | None = None,
                      mvn: str = "mvn", offline: bool = False) -> Path:
    """Return the verified jar directory for `version`, resolving it with Maven if needed."""
    home = kafka_home(version, root)
    if home.is_dir() and not verify(home, version):
        return home / "jars"
    home.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test sessions may race to fill the cache: one resolves, the others wait.
    with open(home.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if home.is_dir() and not verify(home, version):
            return home / "jars"
        return _resolve(home, version, mvn, offline)


def _resolve(home: Path, version: str, mvn: str, offline: bool) -> Path:
    if offline:
        raise JarCacheError(f"Kafka {version} jars are not cached (or fail verification) "
                            f"under {home}; run `make setup`")
    if shutil.which(mvn) is None:
        raise JarCacheError("`mvn` not found; install Maven (apt-get install -y maven)")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=home.parent))
    try:
        (staging / "pom.xml").write_text(POM_TEMPLATE.format(kafka=version, log4j=LOG4J_VERSION))
        jar_dir = staging / "jars"
        # -C: fail on checksum mismatch of anything downloaded from the repository.
        proc = subprocess.run(
            [mvn, "-q", "-B", "-C", "-f", str(staging / "pom.xml"),
             "dependency:copy-dependencies", f"-DoutputDirectory={jar_dir}",
             "-DincludeScope=runtime"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            raise JarCacheError(f"mvn could not resolve Kafka {version} "
                                f"(exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        write_manifest(jar_dir, version)
        problems = verify(staging, version)
        if problems:
            raise JarCacheError(f"resolved Kafka jars failed verification: {problems}")
        if home.exists():  # a bad earlier copy: move it aside, then drop it
            bad = home.with_name(home.name + ".bad")
            shutil.rmtree(bad, ignore_errors=True)
            home.rename(bad)
            shutil.rmtree(bad, ignore_errors=True)
        staging.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home / "jars"
