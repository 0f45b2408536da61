#!/usr/bin/env bash
# Re-run shipped studies in the background, from a frozen copy of the code, with their own store.
#
#   tools/studies.sh run DIR STUDY...      start (or resume) the studies one after another at
#                                          nice 19 from a git worktree of HEAD at DIR (made once),
#                                          MLflow store DIR/mlflow.db, checkpoints DIR/.harness;
#                                          progress in DIR/studies.log; returns at once
#   tools/studies.sh save DIR STUDY...     copy the records of the finished trials to
#                                          results/records/<study>/ here (commit them)
#   tools/studies.sh collect DIR STUDY...  fit and write results/ (caches, figures, report.md)
#                                          here from DIR's store; a study's records go once all
#                                          its trials have finished
#
# The worktree keeps the code fixed while this checkout changes; a rerun of `run` skips finished
# trials and resumes the rest from their checkpoints. The store in DIR does not survive a new
# machine: commit results/cache/<study>.* as each study finishes, and `save` a study that must
# stop half-way: `run` on a new machine replays its saved records (harness/carry.py) and trains
# only the rest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"; dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" || $# -lt 3 ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
shift 2
for s in "$@"; do
  [[ -f "$here/sweeps/$s.yaml" ]] || { echo "tools/studies.sh: no study sweeps/$s.yaml" >&2; exit 2; }
done
dir="$(mkdir -p "$dir" && cd "$dir" && pwd)"
store="sqlite:///$dir/mlflow.db"
py="$here/.venv/bin/python"
[[ -x "$py" ]] || make -C "$here" setup >/dev/null
case "$cmd" in
  run)
    [[ -e "$dir/.git" ]] || { rmdir "$dir" 2>/dev/null || true; git -C "$here" worktree add --detach "$dir" HEAD >/dev/null; }
    ( cd "$dir"
      export PYTHONPATH="$dir" MLFLOW_TRACKING_URI="$store" HARNESS_STORAGE="$dir/.harness"
      for s in "$@"; do
        echo "=== $s start $(date -u +%FT%TZ) at $(git rev-parse --short HEAD)"
        if [[ -d "$here/results/records/$s" ]]; then
          (cd "$here" && PYTHONPATH="$here" "$py" -m harness.carry restore "$dir/sweeps/$s.yaml" \
            "results/records/$s" --storage "$dir/.harness") || echo "=== $s: records not restored"
        fi
        nice -n 19 "$here/.venv/bin/harness" submit "sweeps/$s.yaml" && rc=0 || rc=$?
        echo "=== $s end rc=$rc $(date -u +%FT%TZ)"
      done ) >> "$dir/studies.log" 2>&1 < /dev/null &
    disown
    echo "running $* from $dir (log: $dir/studies.log)" ;;
  collect)
    cd "$here"
    args=$(printf "'%s'," "$@")
    "$py" -c "from analysis.report import make_all; make_all([${args%,}], refresh=True, uri='$store')"
    for s in "$@"; do
      "$py" -m harness.carry drop "$dir/sweeps/$s.yaml" "results/records/$s" --storage "$dir/.harness"
    done
    echo "wrote results/ from $store; commit results/cache/ and results/report.md" ;;
  save)
    cd "$here"
    for s in "$@"; do
      "$py" -m harness.carry save "$dir/sweeps/$s.yaml" "results/records/$s" --storage "$dir/.harness"
    done
    echo "commit results/records/ so that a new machine can resume from it" ;;
  *) echo "tools/studies.sh: unknown command '$cmd' (run, save or collect)" >&2; exit 2 ;;
esac
