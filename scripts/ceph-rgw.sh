#!/usr/bin/env bash
# A throw-away Ceph cluster with a RADOS Gateway (S3) on 127.0.0.1, for the Object Lock tests:
# RGW enforces S3 Object Lock retention as AWS does (a locked version cannot be deleted before
# its date), which the lighter test servers do not.
#
#   bash scripts/ceph-rgw.sh start DIR [WATCH_PID]   prints the endpoint URL on stdout
#   bash scripts/ceph-rgw.sh stop DIR
#   bash scripts/ceph-rgw.sh restart-gateway DIR   kills the gateway (SIGKILL, as a crash) and
#                                                  starts it again on the same port
#
# One monitor, one in-memory OSD (memstore, CEPH_MEMSTORE_BYTES, default 2 GiB, held in RAM as
# objects arrive), no manager, no authentication between daemons;
# every file (config, stores, logs, sockets) is under DIR, which start wipes first. With
# WATCH_PID, the cluster stops itself when that process ends (a test binary that started it)
# and DIR is removed.
# S3 user: access key `volbacktest`, secret `volbacktestsecret`. Needs Debian's ceph-mon,
# ceph-osd, radosgw and ceph-common (scripts/test.sh installs them).
set -euo pipefail
cmd=${1:?usage: ceph-rgw.sh start|stop|restart-gateway DIR [WATCH_PID]}
dir=${2:?usage: ceph-rgw.sh start|stop|restart-gateway DIR [WATCH_PID]}
case "$dir" in / | /tmp | /tmp/ | "$HOME" | "") echo "ceph-rgw: refusing DIR '$dir'" >&2; exit 2 ;; esac

stop() {
  [ -f "$dir/pids" ] || return 0
  local pids
  pids=$(cat "$dir/pids")
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  rm -f "$dir/pids"
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
if [ "$cmd" = restart-gateway ]; then
  old=$(cat "$dir/rgw.pid")
  kill -9 "$old" 2>/dev/null || true
  while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
  grep -vx "$old" "$dir/pids" >"$dir/pids.new" || true
  mv "$dir/pids.new" "$dir/pids"
  radosgw -c "$dir/ceph.conf" -n client.rgw -f >>"$dir/log/rgw.out" 2>&1 &
  echo "$!" >>"$dir/pids"
  echo "$!" >"$dir/rgw.pid"
  port=$(sed -n 's/^rgw frontends = beast endpoint=127.0.0.1:\([0-9]*\)$/\1/p' "$dir/ceph.conf")
  for _ in $(seq 600); do
    curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$port/" && exit 0
    sleep 0.1
  done
  echo "ceph-rgw: the gateway did not come back on port $port" >&2
  exit 1
fi
[ "$cmd" = start ] || { echo "ceph-rgw: unknown command '$cmd'" >&2; exit 2; }
watch=${3:-}
for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool uuidgen curl; do
  command -v "$b" >/dev/null || {
    echo "ceph-rgw: $b is missing: apt-get install ceph-mon ceph-osd radosgw ceph-common curl" >&2
    exit 2
  }
done
stop
rm -rf "$dir"
mkdir -p "$dir"/{log,run,mon,osd,rgw}
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
: >"$dir/pids"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mon_port=$(port)
rgw_port=$(port)
fsid=$(uuidgen)
deadline=$((SECONDS + ${CEPH_START_TIMEOUT:-180}))
fail() {
  echo "ceph-rgw: $*" >&2
  tail -n 20 "$dir"/log/*.log "$dir"/log/*.out >&2 2>/dev/null || true
  stop
  exit 1
}
wait_for() { # what, command...
  local what=$1
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what did not come up"
    sleep 0.2
  done
}

cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# radosgw asks for a secure monitor connection by default, which needs authentication.
ms mon client mode = crc secure
keyring = $dir/keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $dir/mon
# Pools are created one map epoch each: a short proposal interval makes RGW's first start fast.
paxos propose interval = 0.05
[osd]
osd data = $dir/osd
osd objectstore = memstore
memstore device bytes = ${CEPH_MEMSTORE_BYTES:-2147483648}
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/rgw
EOF

daemon() { # name, command...
  local name=$1
  shift
  "$@" >"$dir/log/$name.out" 2>&1 &
  echo "$!" >>"$dir/pids"
}
ceph_() { timeout 30 ceph -c "$conf" --connect-timeout 20 "$@"; }

# mkfs wants a keyring even without authentication.
ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' >/dev/null
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/keyring" >"$dir/log/mkfs.out" 2>&1 \
  || fail "ceph-mon --mkfs failed"
daemon mon ceph-mon -c "$conf" -i a -f
wait_for "the monitor" ceph_ mon stat
uuid=$(uuidgen)
id=$(ceph_ osd new "$uuid")
ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >>"$dir/log/mkfs.out" 2>&1 || fail "ceph-osd --mkfs failed"
daemon osd ceph-osd -c "$conf" -i "$id" -f
osd_up() { ceph_ osd stat | grep -q '1 up'; }
wait_for "the OSD" osd_up
daemon rgw radosgw -c "$conf" -n client.rgw -f
echo "$!" >"$dir/rgw.pid"
wait_for "the gateway" curl -sf -o /dev/null --max-time 5 "http://127.0.0.1:$rgw_port/"
timeout 60 radosgw-admin -c "$conf" -n client.admin user create --uid=volback --display-name=volback \
  --access-key=volbacktest --secret=volbacktestsecret >"$dir/log/user.out" 2>&1 || fail "radosgw-admin user create failed"
# The new user is known to the gateway once a signed request succeeds (curl does not send the
# payload hash header RGW's SigV4 check wants: it is the SHA-256 of an empty body).
signed() {
  curl -sf -o /dev/null --max-time 5 --aws-sigv4 aws:amz:us-east-1:s3 --user volbacktest:volbacktestsecret \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "http://127.0.0.1:$rgw_port/"
}
wait_for "a signed request" signed
if [ -n "$watch" ]; then
  # Stops the cluster when the process that started it ends, however it ends.
  (
    while kill -0 "$watch" 2>/dev/null; do sleep 1; done
    bash "$0" stop "$dir"
    rm -rf "$dir"
  ) </dev/null >/dev/null 2>&1 &
  disown
fi
echo "http://127.0.0.1:$rgw_port"
