#!/usr/bin/env bash
# Runs every native Go fuzz target for FUZZTIME each (make fuzz: 60s; make
# test: a few seconds) and prints `BENCH fuzz_execs N` and
# `BENCH fuzz_crashes N`. A crash fails the run; go test writes the input
# that crashed under the package's testdata/fuzz/<Target>/ (commit it as a
# regression case once fixed).
set -uo pipefail
cd "$(dirname "$0")/../.."
fuzztime=${FUZZTIME:-60s}

# package target: every fuzz target of the module. A new Fuzz function must
# be added here; the check below fails when one is missing.
targets=(
  "./agent/api FuzzRequests"
  "./agent/config FuzzParse"
  "./sdk/agentapi FuzzJSONTypes"
  "./platform/api FuzzAPIRequestDecoding"
  "./sdk/tunnel FuzzReadLine"
  "./agent/storage/ship FuzzReadTree"
)

listed=$(printf '%s\n' "${targets[@]}" | awk '{print $2}' | sort)
found=$(git grep -h -o -E '^func Fuzz[A-Za-z0-9_]+' -- '*_test.go' | sed 's/^func //' | sort)
if [[ "$listed" != "$found" ]]; then
  echo "fuzz: deploy/dev/fuzz.sh lists [$(echo $listed)] but the code has [$(echo $found)]: add the new target to the list" >&2
  exit 1
fi

total=0 crashes=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 10s "$pkg" 2>&1)
  rc=$?
  # The last progress line holds the total: "fuzz: elapsed: 20s, execs: 12345 (617/sec), ..."
  execs=$(grep -o 'execs: [0-9]*' <<<"$out" | tail -1 | awk '{print $2}')
  execs=${execs:-0}
  total=$((total + execs))
  if ((rc != 0)); then
    crashes=$((crashes + 1))
    echo "$out" | tail -40
    echo "fuzz: $pkg $name FAILED after $execs executions"
  else
    echo "fuzz: $pkg $name: $execs executions in $fuzztime, no crash"
  fi
done
echo "BENCH fuzz_execs $total"
echo "BENCH fuzz_crashes $crashes"
((crashes == 0))
