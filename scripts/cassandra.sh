#!/usr/bin/env bash
# A local CQL server for the ScyllaDB backend's tests and the local cluster (issue 15): Apache
# Cassandra 5.0.9 from Maven Central on Java 17, one node on free loopback ports.
#
#   eval "$(bash scripts/cassandra.sh start DIR)"   # fetches the jars if missing, starts the node,
#                                                    # waits until CQL answers, prints export lines
#   bash scripts/cassandra.sh stop DIR               # stops the node started in DIR
#
# Printed on stdout (everything else goes to stderr): TERN_TEST_CQL (host:port of the native
# protocol), TERN_TEST_CQL_DIR (DIR). The jars go to target/tools/cassandra (ROOT), fetched once
# with Maven from ops/cassandra/pom.xml (~7 s, 100 jars, 67 MB). Java 17 is required: Cassandra
# 5.0 needs the SecurityManager, which Java 24+ removed. Ready in ~4 s idle, ~15 s under load;
# ~1.5 GB RSS with the 1 GB heap (CASSANDRA_HEAP, e.g. 512M, to shrink it).
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${ROOT:-$repo/target/tools/cassandra}"
heap="${CASSANDRA_HEAP:-1G}"
# How long start waits for the CQL port (a loaded 2-core machine took 15 s; margin for more).
READY_SECS="${CASSANDRA_READY_SECS:-120}"

alive() { [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

exports() {
  echo "export TERN_TEST_CQL=127.0.0.1:$(cat "$dir/native_port")"
  echo "export TERN_TEST_CQL_DIR=$(cd "$dir" && pwd)"
}

java17() {
  local j
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [[ -x "$j" ]] && { echo "$j"; return 0; }
  done
  return 1
}

install_jars() {
  [[ -f "$ROOT/lib/.complete" ]] && return 0
  if ! command -v mvn >/dev/null; then
    if [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
    else
      echo "cassandra: Maven is missing: apt-get install -y maven (as root)" >&2
      exit 2
    fi
  fi
  echo "cassandra: fetching Cassandra 5.0.9's jars into $ROOT/lib (Maven Central)..." >&2
  rm -rf "$ROOT/lib"
  mkdir -p "$ROOT"
  mvn -q -B -f "$repo/ops/cassandra/pom.xml" -Dmaven.repo.local="$ROOT/m2" \
    dependency:copy-dependencies -DoutputDirectory="$ROOT/lib" -DincludeScope=runtime >&2
  touch "$ROOT/lib/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cql_ready() {
  # The native protocol answers an OPTIONS frame with SUPPORTED (opcode 0x06): the port is open
  # before the node has finished starting, so a bare connect is not enough.
  python3 - "$1" <<'PY'
import socket, struct, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.sendall(struct.pack(">BBhBi", 0x04, 0, 0, 0x05, 0))  # v4 request, stream 0, OPTIONS
    head = s.recv(9)
    sys.exit(0 if len(head) == 9 and head[4] == 0x06 else 1)
except OSError:
    sys.exit(1)
PY
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if alive; then
      exports
      exit 0
    fi
    java="$(java17)" || {
      if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
        java="$(java17)"
      else
        echo "cassandra: Java 17 is missing: apt-get install -y openjdk-17-jre-headless (as root)" >&2
        exit 2
      fi
    }
    install_jars
    jamm="$(ls "$ROOT"/lib/jamm-*.jar | head -n 1)"
    for attempt in 1 2 3; do
      native_port="$(free_port)"
      storage_port="$(free_port)"
      jmx_port="$(free_port)"
      mkdir -p "$dir/conf" "$dir/data"
      sed -e "s|@DIR@|$dir|g" -e "s|@NATIVE_PORT@|$native_port|g" -e "s|@STORAGE_PORT@|$storage_port|g" \
        "$repo/ops/cassandra/cassandra.yaml" >"$dir/conf/cassandra.yaml"
      sed -e "s|@DIR@|$dir|g" "$repo/ops/cassandra/logback.xml" >"$dir/conf/logback.xml"
      echo "$native_port" >"$dir/native_port"
      # The JVM flags Cassandra 5.0 needs on Java 17 (its own cassandra-env.sh and jvm17 options).
      "$java" "-Xms$heap" "-Xmx$heap" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
        -XX:MaxTenuringThreshold=1 -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports java.sql/java.sql=ALL-UNNAMED \
        --add-exports java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
        --add-opens java.base/java.lang.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
        --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
        --add-opens java.base/java.lang=ALL-UNNAMED \
        --add-opens java.base/java.util=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true \
        "-javaagent:$jamm" \
        "-Dcassandra.config=file://$dir/conf/cassandra.yaml" \
        "-Dlogback.configurationFile=$dir/conf/logback.xml" \
        "-Dcassandra.storagedir=$dir/data" "-Dcassandra.logdir=$dir" \
        -Dcassandra-foreground=yes -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        "-Dcassandra.jmx.local.port=$jmx_port" \
        -cp "$dir/conf:$ROOT/lib/*" org.apache.cassandra.service.CassandraDaemon \
        >"$dir/stdout.log" 2>&1 &
      echo $! >"$dir/pid"
      started=$SECONDS
      while alive && (( SECONDS - started < READY_SECS )); do
        if cql_ready "$native_port"; then
          echo "cassandra: ready on 127.0.0.1:$native_port in $((SECONDS - started)) s (pid $(cat "$dir/pid"), log $dir/system.log)" >&2
          exports
          exit 0
        fi
        sleep 0.5
      done
      if alive; then kill "$(cat "$dir/pid")" || true; fi
      rm -f "$dir/pid"
      # A port taken between free_port and the bind: try others. Anything else shows in the log.
      grep -q "Address already in use" "$dir/system.log" "$dir/stdout.log" 2>/dev/null || break
      echo "cassandra: a port was taken (attempt $attempt); retrying" >&2
    done
    echo "cassandra: did not start; the end of its logs:" >&2
    tail -n 40 "$dir/stdout.log" "$dir/system.log" >&2 2>/dev/null || true
    exit 1
    ;;
  stop)
    if alive; then
      pid="$(cat "$dir/pid")"
      kill "$pid"
      # SIGTERM drains in 6-10 s; a node that hangs is killed after 30.
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      echo "cassandra: stopped" >&2
    fi
    rm -f "$dir/pid"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
