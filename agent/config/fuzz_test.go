package config

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParse: no YAML makes the loader panic or hang, and a config it
// accepts is valid, has a token (or the loopback-only insecure switch),
// and survives a round trip: written back as YAML and parsed again, it is
// the same config.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("server: {verificationToken: " + testToken + "}\npools: [{name: p, mode: zfs, path: tank/p}]\n"))
	f.Add([]byte("server: {host: '::1', insecureNoAuth: true, metricsAddress: '[::1]:9187'}\npools: [{name: p, mode: btrfs, path: /p}]\ncloning: {maxIdleMinutes: 0}\n"))
	f.Add([]byte("server: {host: 0.0.0.0, insecureNoAuth: true}\n"))
	f.Add([]byte("server: {verificationToken: x, tls: {certFile: /etc/passwd, keyFile: /etc/passwd}}\n"))
	f.Add([]byte("pools: [{name: p, mode: btrfs, path: /p}]\nprovision: {resources: {memory: 1e400Gi, cpu: NaN}}\n"))
	f.Add([]byte("retrieval: {mode: logical, refreshSchedule: '*/0 * * * *', source: {connStr: 'host=x'}}\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("server: !!binary AAAA\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, raw []byte) {
		// Paths in fuzzed TLS settings could name anything on the host;
		// the loader stats them and reads regular files only.
		c, err := Parse(raw, "fuzz.yaml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate refuses: %v", err)
		}
		if c.Server.InsecureNoAuth {
			if !IsLoopback(c.Server.Host) {
				t.Fatalf("insecureNoAuth accepted on %q", c.Server.Host)
			}
		} else if len(c.Server.VerificationToken) < MinTokenLength {
			t.Fatalf("accepted a token of %d characters", len(c.Server.VerificationToken))
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("an accepted config does not marshal: %v", err)
		}
		again, err := Parse(out, "again.yaml")
		if err != nil {
			t.Fatalf("an accepted config, written back, is refused: %v\n%s", err, out)
		}
		// Compared as YAML: nil and empty maps or lists are the same config.
		out2, err := yaml.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the config:\nfirst\n%s\nsecond\n%s", out, out2)
		}
	})
}
