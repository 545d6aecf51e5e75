#!/usr/bin/env bash
# Submits a gflowgr command to a Ray cluster as a job: this repository as the working directory,
# cluster/runtime-env.yaml as the runtime environment, the cluster's token for authentication.
#
#   cluster/submit.sh [--address URL] [--submission-id ID] [--no-wait] -- gflowgr run --config C
#
#   --address        the head's dashboard / job API (default: $RAY_ADDRESS, else
#                    http://127.0.0.1:8265, e.g. through `ray dashboard cluster.yaml`'s tunnel)
#   --submission-id  a name for the job, to follow, stop or resume it by
#   --no-wait        return once submitted (follow with `ray job logs --follow ID`)
#
# The token: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
# Set RAY_CLI to pick the ray executable (default: the one on PATH).
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
fail() {
    echo "cluster/submit.sh: error: $*" >&2
    exit 2
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
RAY_CLI=${RAY_CLI:-ray}
EXTRA=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --address) [[ $# -ge 2 ]] || fail "--address needs a URL"; ADDRESS=$2; shift 2 ;;
        --submission-id) [[ $# -ge 2 ]] || fail "--submission-id needs a name"
            EXTRA+=(--submission-id "$2"); shift 2 ;;
        --no-wait) EXTRA+=(--no-wait); shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) fail "unknown option '$1'; put the job's command after -- (see --help)" ;;
    esac
done
[[ $# -gt 0 ]] || fail "no command to run; e.g. cluster/submit.sh -- gflowgr run --config configs/cluster.yaml"
[[ $ADDRESS == http://* || $ADDRESS == https://* ]] \
    || fail "--address '$ADDRESS' is not the job API's http(s)://host:port (the dashboard port, 8265 by default)"
command -v "$RAY_CLI" >/dev/null || fail "'$RAY_CLI' not found; install the package (pip install -e .) or set RAY_CLI"

# Token auth stays on: CLI clients default to no auth, so say so and hand over the token.
if [[ -z ${RAY_AUTH_TOKEN:-} ]]; then
    TOKEN_FILE=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
    [[ -r $TOKEN_FILE ]] || fail "no Ray token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it (looked for '$TOKEN_FILE'; see docs/deployment.md)"
    export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE
fi
export RAY_AUTH_MODE=token

exec "$RAY_CLI" job submit --address "$ADDRESS" --working-dir "$REPO" \
    --runtime-env "$REPO/cluster/runtime-env.yaml" ${EXTRA[@]+"${EXTRA[@]}"} -- "$@"
