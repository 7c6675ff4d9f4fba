# Sourced by .ci/run and scripts/test.sh: `stage NAME` prints "== NAME" and how long the stage
# before it took, so a run shows where its time goes (and which stage grew). The last stage's
# time, and the total, are printed on exit, also when a stage fails.
_stage_name=""
_stage_started=0
_stages_started=$(date +%s)

stage() {
    local now
    now=$(date +%s)
    if [[ -n "$_stage_name" ]]; then
        echo "-- $_stage_name: $((now - _stage_started)) s"
    fi
    _stage_name="$1"
    _stage_started=$now
    if [[ -n "$_stage_name" ]]; then
        echo "== $_stage_name"
    fi
}

_stages_done() {
    local status=$?
    stage ""
    echo "-- total ($(basename "$0")): $(($(date +%s) - _stages_started)) s, exit $status"
}
trap _stages_done EXIT
