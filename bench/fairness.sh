#!/usr/bin/env bash
# A fair share of a saturated provider: one heavy user and light users
# offering about twice what a shared upstream can serve, through three
# Pantheon instances over one PostgreSQL and one Redis, with the provider
# queue in `fair` order (per-user virtual token counters, VTC) and in
# `fifo` order (the baseline), then the light users alone (`uncontended`).
#
#   bench/fairness.sh                 # about 10 minutes, build cached
#   FAIR_SECS=60 bench/fairness.sh    # a quick run
#
# The upstream is `pantheon-loadgen upstream`: a fake OpenAI-compatible
# /v1/chat/completions that serves FAIR_CAPACITY requests at once (one more
# gets 429 + Retry-After: 1), each streamed after a prefill pause (prompt
# tokens ÷ FAIR_PREFILL_TPS) at FAIR_TOKENS_PER_SEC output tokens a second.
# The servers get provider.max_concurrent = FAIR_CAPACITY, so with the queue
# the upstream should never answer 429 nor see more than that many requests.
# The load is `pantheon-loadgen fair`: open-loop Poisson arrivals, 1 heavy
# user (FAIR_HEAVY_TOKENS of input a turn) sending FAIR_HEAVY_MULTIPLIER
# times as often as each of FAIR_LIGHT_USERS light users (FAIR_LIGHT_TOKENS),
# round-robin over the instances, on the streaming endpoint; every turn's
# output is FAIR_OUTPUT_TOKENS (turns.max_output_tokens, the max_tokens the
# upstream obeys). The light users' rate is computed so that the offered
# slot occupancy (Σ rate × (prompt ÷ prefill rate + output ÷ token rate)) is
# FAIR_LOAD × FAIR_CAPACITY; per-user limits are raised so they never refuse.
#
# Environment (all optional): FAIR_SECS (measured seconds of arrivals per
# contended scenario, default 180), FAIR_WARMUP (seconds of arrivals before,
# default 15), FAIR_UNCONTENDED_SECS (default 120, at most FAIR_SECS),
# FAIR_CAPACITY (4), FAIR_TOKENS_PER_SEC (32), FAIR_PREFILL_TPS (8000),
# FAIR_OUTPUT_TOKENS (64), FAIR_HEAVY_TOKENS (8000), FAIR_LIGHT_TOKENS (200),
# FAIR_LIGHT_USERS (9), FAIR_HEAVY_MULTIPLIER (10), FAIR_LOAD (2),
# FAIR_QUEUE_TIMEOUT (provider.queue_timeout_secs, 30), FAIR_WINDOW (the
# fairness window, 60 s), FAIR_SCENARIOS (default "fair fifo uncontended"),
# BENCH_KEEP=1 keeps the work directory (logs, per-turn JSON lines).
#
# A build without the provider queue (no `queue_order` setting in the
# binary) refuses provider.max_concurrent: the script then says so, runs
# `noqueue` (the same load, no provider.* queue settings: today's behaviour,
# where the upstream's 429s fail turns) and `uncontended`.
#
# Definitions (computed from the upstream's per-request log and the load
# generator's per-turn lines, over the measured arrivals only):
# - Service S_i(t): the tokens the upstream processed for user i by time t
#   (its log): a request's prompt tokens spread evenly over its prefill
#   pause, the output tokens it sent over its generation (a request cut
#   short counts what it was served).
# - Backlogged (the VTC paper's definition, Sheng et al., OSDI 2024): user i
#   is backlogged at t when it has a turn waiting, i.e. submitted and not
#   yet dispatched to the upstream (dispatch = the upstream's t_start for
#   the turn's tag; a turn never dispatched waits until its end). A turn
#   that is generating does not make its user backlogged. Sampled every
#   0.1 s.
# - Jain (VTC): per FAIR_WINDOW-s window, Jain's index (Σx)²/(n·Σx²) of the
#   service in the window over the users backlogged throughout the window
#   (the set VTC's bound speaks of); "–" when fewer than 2 such users.
# - Jain (max-min): per window, over every user with demand in it, of
#   x_i = service_i ÷ share_i, share_i being user i's max-min fair share
#   (water-filling the window's total service over the demands), demand_i
#   = service_i + the cost (prompt + output cap) of its turns that waited in
#   the window and were not dispatched by its end (Jain's own normalisation
#   by the fair allocation: 1 when every user gets its max-min share).
# - Service difference: the maximum, over pairs of users and intervals
#   [t1, t2] in which both are backlogged throughout, of
#   |(S_i(t2) − S_i(t1)) − (S_j(t2) − S_j(t1))|; VTC bounds it by
#   2 × the largest request's cost (prompt + output tokens).
#   Also given with each request's whole cost counted at its dispatch,
#   as the scheduler's counters count it (the form VTC's bound is proved
#   on): the as-processed figure can pass the bound by the part of the
#   requests in flight not yet processed.
# - TTFD: a turn's first turn.delta minus its submission, light users'
#   completed turns only (p50/p99); rejected: every measured turn that did
#   not complete, by code.
#
# Every process it starts is stopped, the database dropped and the work
# directory removed on exit. All traffic goes to 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
DB=pantheon_fairness
SECS=${FAIR_SECS:-180}
WARMUP=${FAIR_WARMUP:-15}
UNCONTENDED_SECS=${FAIR_UNCONTENDED_SECS:-120}
[ "$UNCONTENDED_SECS" -le "$SECS" ] || UNCONTENDED_SECS=$SECS
C=${FAIR_CAPACITY:-4}
R=${FAIR_TOKENS_PER_SEC:-32}
Q=${FAIR_PREFILL_TPS:-8000}
OUT_TOKENS=${FAIR_OUTPUT_TOKENS:-64}
HEAVY_TOKENS=${FAIR_HEAVY_TOKENS:-8000}
LIGHT_TOKENS=${FAIR_LIGHT_TOKENS:-200}
LIGHTS=${FAIR_LIGHT_USERS:-9}
MULT=${FAIR_HEAVY_MULTIPLIER:-10}
LOAD=${FAIR_LOAD:-2}
QUEUE_TIMEOUT=${FAIR_QUEUE_TIMEOUT:-30}
WINDOW=${FAIR_WINDOW:-60}

source bench/lib.sh

cargo build --release -q -p pantheon-api -p pantheon-loadgen
LOADGEN="$(pwd)/target/release/pantheon-loadgen"
BINARY="$(pwd)/target/release/pantheon"
scripts/services.sh
raise_open_files

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pantheon-fairness.XXXXXX")
UPSTREAM_PID=
cleanup() {
  local status=$?
  for name in "${!SPID[@]}"; do stop_server "$name"; done
  if [ -n "$UPSTREAM_PID" ] && kill -0 "$UPSTREAM_PID" 2>/dev/null; then
    kill -TERM "$UPSTREAM_PID" 2>/dev/null || true
    wait "$UPSTREAM_PID" 2>/dev/null || true
  fi
  stop_redis fair
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if grep -qa 'queue_order' "$BINARY"; then
  QUEUE=1
  SCENARIOS=${FAIR_SCENARIOS:-fair fifo uncontended}
else
  QUEUE=0
  SCENARIOS=${FAIR_SCENARIOS:-noqueue uncontended}
  log "this build has no provider queue (no provider.queue_order): measuring today's behaviour"
fi

# The light users' rate for FAIR_LOAD × capacity, and what is offered.
read -r RATE OFFER <<<"$(python3 -c "
C, R, Q, out, h, l, n, m, load = $C, $R, $Q, $OUT_TOKENS, $HEAVY_TOKENS, $LIGHT_TOKENS, $LIGHTS, $MULT, $LOAD
hold_h, hold_l = h / Q + out / R, l / Q + out / R
x = load * C / (n * hold_l + m * hold_h)
print(f'{x:.6f}', f'light_rate={x:.4f}/s heavy_rate={m * x:.4f}/s hold_light={hold_l:.3f}s hold_heavy={hold_h:.3f}s '
      f'offered_slots={n * x * hold_l + m * x * hold_h:.2f} (light {n * x * hold_l:.2f}, heavy {m * x * hold_h:.2f}) capacity_slots={C} '
      f'offered_tokens_per_s={n * x * (l + out) + m * x * (h + out):.0f} turns_per_s={(n + m) * x:.3f}')
")"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) cores; queue feature: $([ $QUEUE = 1 ] && echo present || echo ABSENT)"
echo "upstream: capacity $C, $R tokens/s a stream, prefill $Q tokens/s; output $OUT_TOKENS tokens; heavy input $HEAVY_TOKENS, light $LIGHT_TOKENS tokens; 1 heavy (×$MULT) + $LIGHTS light users"
echo "offered: $OFFER (load factor $LOAD)"

bench_env warn 2
psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" 2>/dev/null
REDIS_PORT=$(start_redis fair)
UPSTREAM_PORT=$("$LOADGEN" free-port)
"$LOADGEN" upstream --port "$UPSTREAM_PORT" --capacity "$C" --tokens-per-sec "$R" \
  --prefill-tokens-per-sec "$Q" --log "$WORK/upstream.jsonl" >"$WORK/upstream.out" 2>&1 &
UPSTREAM_PID=$!
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$UPSTREAM_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$UPSTREAM_PORT/healthz" >/dev/null || die "the fake upstream did not start"

ENV=(PANTHEON__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$DB"
  PANTHEON__REDIS__URL="redis://127.0.0.1:$REDIS_PORT" PANTHEON__REDIS__TIMEOUT_MS=500
  PANTHEON__PROVIDER__KIND=openai PANTHEON__PROVIDER__OPENAI__BASE_URL="http://127.0.0.1:$UPSTREAM_PORT/v1"
  PANTHEON__PROVIDER__OPENAI__MODEL=fake PANTHEON__PROVIDER__OPENAI__CONTEXT_TURNS=0
  PANTHEON__TURNS__MAX_OUTPUT_TOKENS="$OUT_TOKENS" PANTHEON__TURNS__MAX_INPUT_CHARS=$((HEAVY_TOKENS * 4 + 4096))
  PANTHEON__RATE_LIMIT__PER_MINUTE=1000000 PANTHEON__RATE_LIMIT__PER_HOUR=1000000
  PANTHEON__RATE_LIMIT__MAX_CONCURRENT_TURNS=100000)

STATS=()
for scenario in $SCENARIOS; do
  extra=() heavy=1 secs=$SECS
  case $scenario in
    fair | fifo) extra=(PANTHEON__PROVIDER__MAX_CONCURRENT="$C" PANTHEON__PROVIDER__QUEUE_ORDER="$scenario"
      PANTHEON__PROVIDER__QUEUE_TIMEOUT_SECS="$QUEUE_TIMEOUT") ;;
    uncontended) heavy=0 secs=$UNCONTENDED_SECS
      [ $QUEUE = 1 ] && extra=(PANTHEON__PROVIDER__MAX_CONCURRENT="$C" PANTHEON__PROVIDER__QUEUE_ORDER=fair
        PANTHEON__PROVIDER__QUEUE_TIMEOUT_SECS="$QUEUE_TIMEOUT") ;;
    noqueue) ;;
    *) die "unknown scenario $scenario" ;;
  esac
  # A fresh state per scenario: the bench's own Redis (never the shared
  # one) is emptied, and the servers are new.
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  for i in 1 2 3; do start_build "$scenario-$i" "$BINARY" "${ENV[@]}" ${extra[@]+"${extra[@]}"}; done
  bases="${SBASE[$scenario-1]},${SBASE[$scenario-2]},${SBASE[$scenario-3]}"
  "$LOADGEN" setup --base "${SBASE[$scenario-1]}" --users $((heavy + LIGHTS)) --prefix "fair-$scenario" \
    --out "$WORK/users-$scenario.txt" >&2
  curl -sf "http://127.0.0.1:$UPSTREAM_PORT/stats?reset=1" >/dev/null
  log "$scenario: ${WARMUP}s warm-up + ${secs}s of arrivals"
  "$LOADGEN" fair --bases "$bases" --users "$WORK/users-$scenario.txt" --heavy-users "$heavy" \
    --scenario "$scenario" --heavy-prompt-tokens "$HEAVY_TOKENS" --light-prompt-tokens "$LIGHT_TOKENS" \
    --secs "$secs" --warmup-secs "$WARMUP" --rate-per-light "$RATE" --heavy-multiplier "$MULT" \
    --out "$WORK/turns-$scenario.jsonl" | grep '^RESULT'
  STATS+=("$scenario $(curl -sf "http://127.0.0.1:$UPSTREAM_PORT/stats")")
  for i in 1 2 3; do stop_server "$scenario-$i"; done
  if grep -qE 'panicked| ERROR ' "$WORK"/server-"$scenario"-*.log; then
    log "$scenario: errors in the servers' logs:"; grep -hE 'panicked| ERROR ' "$WORK"/server-"$scenario"-*.log | head -n 5 >&2
  fi
done
printf '%s\n' "${STATS[@]}" >"$WORK/stats.txt"

python3 - "$WORK" "$C" "$WINDOW" "$OUT_TOKENS" "$HEAVY_TOKENS" "$LIGHT_TOKENS" $SCENARIOS <<'PY'
import json, math, os, sys
from collections import defaultdict

work, C, WINDOW, OUT_CAP, HEAVY, LIGHT = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *map(int, sys.argv[4:7])
scenarios = sys.argv[7:]
DT = 0.1

upstream = [json.loads(l) for l in open(f"{work}/upstream.jsonl")]
stats = {}
for line in open(f"{work}/stats.txt") if os.path.exists(f"{work}/stats.txt") else []:
    name, _, js = line.partition(" ")
    stats[name] = json.loads(js)

def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

def jain(xs):
    s, s2 = sum(xs), sum(x * x for x in xs)
    return s * s / (len(xs) * s2) if s2 > 0 else 1.0

def maxmin(demands, total):
    share, left, active = {u: 0.0 for u in demands}, total, {u for u, d in demands.items() if d > 0}
    while active and left > 1e-9:
        each = left / len(active)
        done = {u for u in active if demands[u] - share[u] <= each}
        if not done:
            for u in active:
                share[u] += each
            left = 0
            break
        for u in done:
            left -= demands[u] - share[u]
            share[u] = demands[u]
        active -= done
    return share

results = {}
for sc in scenarios:
    lines = [json.loads(l) for l in open(f"{work}/turns-{sc}.jsonl")]
    run = next(l for l in lines if l["kind"] == "run")
    turns = [l for l in lines if l["kind"] == "turn"]
    t0, t1 = run["t_measure"], run["t_stop"]
    ups = [u for u in upstream if u["tag"].startswith(sc + ":")]
    served = {u["tag"]: u for u in ups if u["status"] == 200}
    users = sorted({t["user"] for t in turns})
    heavy = {t["user"] for t in turns if t["heavy"]}
    n = int(round((t1 - t0) / DT)) + 1
    grid = [t0 + k * DT for k in range(n)]
    # Service: cumulative tokens per user on the grid.
    S = {u: [0.0] * n for u in users}
    def add(u, a, b, tokens):
        if tokens <= 0:
            return
        if b <= a:
            b = a + 1e-6
        for k, t in enumerate(grid):
            S[u][k] += tokens * min(1.0, max(0.0, (t - a) / (b - a)))
    # The same service as the scheduler counts it: a request's whole cost
    # at its dispatch (VTC's counters, which its bound is stated on).
    D = {u: [0.0] * n for u in users}
    served_tokens = 0.0
    output_tokens = 0.0
    max_cost = 0
    for u in ups:
        if u["status"] != 200:
            continue
        user = int(u["tag"].split(":")[1][1:])
        a, p, e = u["t_start"], u["t_start"] + u["prefill_s"], u["t_end"]
        # A request cut short was served its prefill up to its end, and
        # the tokens it was sent.
        prompt = u["prompt_tokens"] * min(1.0, (e - a) / max(p - a, 1e-6))
        p = min(p, e)
        add(user, a, p, prompt)
        add(user, p, e, u["sent_tokens"])
        max_cost = max(max_cost, u["prompt_tokens"] + u["completion_tokens"])
        for k, t in enumerate(grid):
            if t >= a:
                D[user][k] += u["prompt_tokens"] + u["sent_tokens"]
        span = max(e - p, 1e-6)
        output_tokens += u["sent_tokens"] * max(0.0, min(e, t1) - max(p, t0)) / span
        for a_, b_, tok in ((a, p, prompt), (p, e, u["sent_tokens"])):
            span = max(b_ - a_, 1e-6)
            served_tokens += tok * max(0.0, min(b_, t1) - max(a_, t0)) / span
    # Backlogged: a turn waits from its submission to its dispatch.
    waits = defaultdict(list)
    for t in turns:
        up = served.get(t["tag"])
        end = up["t_start"] if up else (t["t_end"] or t1)
        waits[t["user"]].append((t["t_submit"], end, t))
    B = {u: [False] * n for u in users}
    for u, ws in waits.items():
        for a, b, _ in ws:
            k0, k1 = max(0, math.ceil((a - t0) / DT)), min(n - 1, math.floor((b - t0) / DT))
            for k in range(k0, k1 + 1):
                B[u][k] = True
    # Windows.
    jv, jm, nb = [], [], []
    per = int(round(WINDOW / DT))
    for w0 in range(0, n - per, per):
        w1 = w0 + per
        svc = {u: S[u][w1] - S[u][w0] for u in users}
        strict = [u for u in users if all(B[u][w0:w1 + 1])]
        nb.append(len(strict))
        if len(strict) >= 2:
            jv.append(jain([svc[u] for u in strict]))
        ta, tb = grid[w0], grid[w1]
        demand = {}
        for u in users:
            pending = 0.0
            for a, b, t in waits[u]:
                if a < tb and b > ta and b >= tb - 1e-9:   # waited in the window, not dispatched by its end
                    prompt = t["prompt_tokens"] or (HEAVY if t["heavy"] else LIGHT)
                    pending += prompt + OUT_CAP
            demand[u] = svc[u] + pending
        share = maxmin(demand, sum(svc.values()))
        xs = [svc[u] / share[u] for u in users if demand[u] > 0 and share[u] > 0]
        if len(xs) >= 2:
            jm.append(jain(xs))
    # Service difference over common backlogged intervals.
    def maxdiff(S):
        diff = 0.0
        for i in users:
            for j in users:
                if j <= i:
                    continue
                k = 0
                while k < n:
                    if B[i][k] and B[j][k]:
                        lo = hi = S[i][k] - S[j][k]
                        while k < n and B[i][k] and B[j][k]:
                            d = S[i][k] - S[j][k]
                            lo, hi = min(lo, d), max(hi, d)
                            k += 1
                        diff = max(diff, hi - lo)
                    else:
                        k += 1
        return diff
    diff, diff_d = maxdiff(S), maxdiff(D)
    measured = [t for t in turns if t["phase"] == "measure"]
    done = [t for t in turns if t["status"] == "completed" and t["t_end"] and t0 <= t["t_end"] < t1]
    ttfd = lambda hv: [t["t_first_delta"] - t["t_submit"] for t in measured
                       if t["heavy"] == hv and t["status"] == "completed" and t["t_first_delta"]]
    rejected = defaultdict(int)
    for t in measured:
        if t["status"] != "completed":
            rejected[f'{t["status"]}:{t["code"]}'] += 1
    # Upstream concurrency over the scenario, from its log.
    ev = sorted([(u["t_start"], 1) for u in ups if u["status"] == 200] +
                [(u["t_end"], -1) for u in ups if u["status"] == 200], key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    busy = sum(max(0.0, min(u["t_end"], t1) - max(u["t_start"], t0)) for u in ups if u["status"] == 200)
    results[sc] = dict(
        turns=len(measured), light_turns=sum(1 for t in measured if not t["heavy"]),
        heavy_turns=sum(1 for t in measured if t["heavy"]),
        jain_vtc=(sum(jv) / len(jv), min(jv)) if jv else None, nb=nb,
        jain_mm=(sum(jm) / len(jm), min(jm)) if jm else None,
        diff=diff, diff_d=diff_d, bound=2 * max_cost, out_s=output_tokens / (t1 - t0),
        tok_s=served_tokens / (t1 - t0), turns_s=len(done) / (t1 - t0), util=busy / (C * (t1 - t0)),
        light=ttfd(False), heavy=ttfd(True),
        light_done=sum(1 for t in measured if not t["heavy"] and t["status"] == "completed"),
        heavy_done=sum(1 for t in measured if t["heavy"] and t["status"] == "completed"),
        queued=sum(1 for t in measured if t["t_queued"]),
        rejected=dict(rejected), r429=sum(1 for u in ups if u["status"] == 429), peak=peak,
        stats=stats.get(sc, {}), secs=t1 - t0)

cols = [s for s in scenarios]
def row(name, f):
    print(f"| {name} | " + " | ".join(f(results[s]) for s in cols) + " |")
print()
print("| | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
row("measured arrivals (s) / turns (light, heavy)", lambda r: f'{r["secs"]:.0f} s / {r["turns"]} ({r["light_turns"]}, {r["heavy_turns"]})')
row("completed (light, heavy)", lambda r: f'{r["light_done"]}, {r["heavy_done"]}')
row("turns that got turn.queued", lambda r: str(r["queued"]))
row(f"Jain, VTC set (users backlogged throughout a {WINDOW:.0f}-s window): mean / min", lambda r: "–" if not r["jain_vtc"] else f'{r["jain_vtc"][0]:.3f} / {r["jain_vtc"][1]:.3f}')
row("users backlogged throughout, per window", lambda r: ",".join(map(str, r["nb"])) or "–")
row(f"Jain, max-min normalised (every user with demand in the window): mean / min", lambda r: "–" if not r["jain_mm"] else f'{r["jain_mm"][0]:.3f} / {r["jain_mm"][1]:.3f}')
row("max service difference, both backlogged (tokens) vs 2 × largest request", lambda r: f'{r["diff"]:.0f} vs {r["bound"]}')
row("same, service counted at dispatch (VTC's counters) vs 2 × largest request", lambda r: f'{r["diff_d"]:.0f} vs {r["bound"]}')
row("throughput: output tokens/s", lambda r: f'{r["out_s"]:.0f}')
row("throughput: tokens/s served (upstream busy)", lambda r: f'{r["tok_s"]:.0f} ({100 * r["util"]:.0f} %)')
row("throughput: completed turns/s", lambda r: f'{r["turns_s"]:.3f}')
row("light TTFD p50 / p99 (ms)", lambda r: f'{1000 * pct(r["light"], .5):.0f} / {1000 * pct(r["light"], .99):.0f}')
row("heavy TTFD p50 / p99 (ms)", lambda r: "–" if not r["heavy"] else f'{1000 * pct(r["heavy"], .5):.0f} / {1000 * pct(r["heavy"], .99):.0f}')
row("not completed (by status:code)", lambda r: str(sum(r["rejected"].values())) + ("" if not r["rejected"] else " (" + ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) + ")"))
row("upstream 429s / max concurrency (log; /stats)", lambda r: f'{r["r429"]} / {r["peak"]} ({r["stats"].get("rejected_429", "?")} / {r["stats"].get("max_concurrency", "?")})')
print()
if "uncontended" in results:
    u99 = pct(results["uncontended"]["light"], .99)
    for s in cols:
        if s != "uncontended" and results[s]["light"]:
            print(f"light TTFD p99 {s} / uncontended: {pct(results[s]['light'], .99) / u99:.2f}")
if "fair" in results and "fifo" in results:
    f, g = results["fair"], results["fifo"]
    if g['tok_s'] > 0 and g['turns_s'] > 0:
      print(f"throughput fair / fifo: tokens {f['tok_s'] / g['tok_s']:.3f}, output tokens {f['out_s'] / max(g['out_s'], 1e-9):.3f}, turns {f['turns_s'] / g['turns_s']:.3f}, upstream busy {f['util'] / max(g['util'], 1e-9):.3f}")
PY
