// Package charttest tests the Helm chart deploy/helm/thinlab-platform with
// Helm's own Go packages (helm.sh/helm/v4): lint, render with the default
// values and every file in the chart's ci/ folder, and assertions on the
// rendered objects. It is its own module so that the thinlab binary never
// links Helm or the Kubernetes client libraries. `make test` runs it.
package charttest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
)

const chartDir = "../thinlab-platform"

// valuesFiles are the cases: the defaults ("") and each ci/*.yaml.
func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("want at least 3 values files in %s/ci: %v %v", chartDir, files, err)
	}
	return append([]string{""}, files...)
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	v, err := common.ReadValuesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func name(file string) string {
	if file == "" {
		return "defaults"
	}
	return strings.TrimSuffix(filepath.Base(file), ".yaml")
}

func TestChartLintsClean(t *testing.T) {
	for _, f := range valuesFiles(t) {
		t.Run(name(f), func(t *testing.T) {
			res := lint.RunAll(chartDir, readValues(t, f), "thinlab")
			for _, m := range res.Messages {
				// Info messages (such as "icon is recommended") are advice.
				if m.Severity > support.InfoSev {
					t.Errorf("lint: %s", m)
				}
			}
		})
	}
}

// object is one rendered Kubernetes object, as YAML decoded into maps.
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }

func (o object) name() string { s, _ := dig(o, "metadata", "name").(string); return s }

// dig walks maps by keys.
func dig(v any, keys ...string) any {
	if o, ok := v.(object); ok {
		v = map[string]any(o)
	}
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

func render(t *testing.T, values map[string]any) ([]object, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := util.ToRenderValues(ch, values, common.ReleaseOptions{Name: "tl", Namespace: "thinlab", IsInstall: true}, common.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	var objs []object
	for path, content := range files {
		if !strings.HasSuffix(path, ".yaml") {
			continue
		}
		dec := yaml.NewDecoder(strings.NewReader(content))
		for {
			var o map[string]any // not object: yaml.v3 would make nested maps objects too
			if err := dec.Decode(&o); err != nil {
				if err.Error() == "EOF" {
					break
				}
				t.Fatalf("%s does not parse: %v\n%s", path, err, content)
			}
			if len(o) > 0 {
				objs = append(objs, object(o))
			}
		}
	}
	return objs, nil
}

func TestChartRendersSafeObjects(t *testing.T) {
	for _, f := range valuesFiles(t) {
		t.Run(name(f), func(t *testing.T) {
			values := readValues(t, f)
			objs, err := render(t, values)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.kind()]++
			}
			if kinds["Deployment"] != 1 || kinds["Service"] < 1 || kinds["ConfigMap"] < 1 || kinds["Secret"] != 1 {
				t.Fatalf("rendered kinds %v: want a Deployment, a Service, a ConfigMap and a Secret", kinds)
			}
			checkWorkloads(t, objs)
			checkNoSecretsOutsideSecrets(t, objs, values)
			checkPlatformConfig(t, objs)

			dep := only(t, objs, "Deployment", "")
			wantReplicas := 1
			switch r := values["replicaCount"].(type) { // values files give float64
			case int:
				wantReplicas = r
			case float64:
				wantReplicas = int(r)
			}
			if got := dig(dep, "spec", "replicas"); got != wantReplicas {
				t.Errorf("replicas %v, want %d", got, wantReplicas)
			}
			env := envOf(dep)
			if wantReplicas > 1 {
				if _, ok := env["THINLAB_PLATFORM_TUNNEL_RELAY_URL"]; !ok {
					t.Errorf("%d replicas without THINLAB_PLATFORM_TUNNEL_RELAY_URL: requests for another replica's agents would fail", wantReplicas)
				}
				if _, ok := env["THINLAB_PLATFORM_TUNNEL_RELAY_SECRET"]; !ok {
					t.Error("replicas without the relay secret")
				}
			}
			if billing, _ := dig(values, "billing", "enabled").(bool); billing {
				if _, ok := env["THINLAB_PLATFORM_BILLING_SECRET_KEY"]; !ok {
					t.Error("billing enabled without THINLAB_PLATFORM_BILLING_SECRET_KEY")
				}
			}
			ingress, _ := dig(values, "ingress", "enabled").(bool)
			if (kinds["Ingress"] == 1) != ingress {
				t.Errorf("ingress.enabled %v but %d Ingress objects", ingress, kinds["Ingress"])
			}
			sm, _ := dig(values, "serviceMonitor", "enabled").(bool)
			if (kinds["ServiceMonitor"] == 1) != sm {
				t.Errorf("serviceMonitor.enabled %v but %d ServiceMonitor objects", sm, kinds["ServiceMonitor"])
			}
			external := dig(values, "database", "external", "url") != nil || dig(values, "database", "external", "existingSecret") != nil
			if (kinds["StatefulSet"] == 1) == external {
				t.Errorf("external database %v but %d StatefulSets (the bundled PostgreSQL)", external, kinds["StatefulSet"])
			}
		})
	}
}

// checkWorkloads: every pod runs as non-root with the runtime's seccomp
// profile, every container with a read-only root filesystem, no privilege
// escalation and no capabilities, with readiness and liveness probes; the
// platform's readiness is /healthz.
func checkWorkloads(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		if o.kind() != "Deployment" && o.kind() != "StatefulSet" {
			continue
		}
		pod := dig(o, "spec", "template", "spec")
		if dig(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s %s: pod securityContext.runAsNonRoot is not true", o.kind(), o.name())
		}
		if uid, _ := dig(pod, "securityContext", "runAsUser").(int); uid == 0 {
			t.Errorf("%s %s: pod runs as uid 0 or none set", o.kind(), o.name())
		}
		if dig(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault" {
			t.Errorf("%s %s: no RuntimeDefault seccomp profile", o.kind(), o.name())
		}
		if dig(pod, "automountServiceAccountToken") != false {
			t.Errorf("%s %s: mounts a service account token it does not need", o.kind(), o.name())
		}
		for _, c := range list(dig(pod, "containers")) {
			cname, _ := dig(c, "name").(string)
			where := o.kind() + " " + o.name() + " container " + cname
			sc := dig(c, "securityContext")
			if dig(sc, "readOnlyRootFilesystem") != true {
				t.Errorf("%s: readOnlyRootFilesystem is not true", where)
			}
			if dig(sc, "allowPrivilegeEscalation") != false {
				t.Errorf("%s: allowPrivilegeEscalation is not false", where)
			}
			if drop := list(dig(sc, "capabilities", "drop")); len(drop) != 1 || drop[0] != "ALL" {
				t.Errorf("%s: capabilities.drop is %v, want [ALL]", where, drop)
			}
			if dig(sc, "privileged") == true {
				t.Errorf("%s: privileged", where)
			}
			if dig(c, "readinessProbe") == nil || dig(c, "livenessProbe") == nil {
				t.Errorf("%s: needs readiness and liveness probes", where)
			}
			if o.kind() == "Deployment" {
				if p := dig(c, "readinessProbe", "httpGet", "path"); p != "/healthz" {
					t.Errorf("%s: readiness probe path %v, want /healthz", where, p)
				}
				if dig(c, "startupProbe", "httpGet", "path") != "/healthz" {
					t.Errorf("%s: startup probe is not /healthz", where)
				}
				if dig(c, "livenessProbe", "httpGet") != nil {
					t.Errorf("%s: liveness must not ask /healthz (a database outage would restart every replica)", where)
				}
			}
		}
	}
}

// checkNoSecretsOutsideSecrets: no value of the rendered Secret, and no
// secret given in the values, appears in a ConfigMap or in a literal
// environment value; every *_SECRET*, *_PASSWORD* and *_URL of a database
// comes from a secretKeyRef.
func checkNoSecretsOutsideSecrets(t *testing.T, objs []object, values map[string]any) {
	t.Helper()
	var secrets []string
	for _, o := range objs {
		if o.kind() != "Secret" {
			continue
		}
		for _, field := range []string{"stringData", "data"} {
			m, _ := dig(o, field).(map[string]any)
			for _, v := range m {
				if s, _ := v.(string); len(s) >= 8 {
					secrets = append(secrets, s)
				}
			}
		}
	}
	for _, path := range [][]string{{"oidc", "clientSecret"}, {"billing", "secretKey"}, {"billing", "webhookSecret"}, {"auth", "cookieSecret"}, {"database", "external", "url"}} {
		if s, _ := dig(values, path...).(string); s != "" {
			secrets = append(secrets, s)
		}
	}
	for _, o := range objs {
		switch o.kind() {
		case "ConfigMap":
			m, _ := dig(o, "data").(map[string]any)
			for k, v := range m {
				s, _ := v.(string)
				for _, secret := range secrets {
					if strings.Contains(s, secret) {
						t.Errorf("ConfigMap %s key %s contains the secret %.6s...", o.name(), k, secret)
					}
				}
				for _, word := range []string{"password", "secretKey:", "clientSecret:", "cookieSecret:", "relaySecret:", "webhookSecret:"} {
					if strings.Contains(strings.ToLower(s), strings.ToLower(word)) && k == "platform.yaml" {
						t.Errorf("ConfigMap %s key %s mentions %q: secrets belong in the Secret", o.name(), k, word)
					}
				}
			}
		case "Deployment", "StatefulSet":
			for _, c := range list(dig(o, "spec", "template", "spec", "containers")) {
				for _, e := range list(dig(c, "env")) {
					n, _ := dig(e, "name").(string)
					v, _ := dig(e, "value").(string)
					for _, secret := range secrets {
						if v != "" && strings.Contains(v, secret) {
							t.Errorf("%s %s env %s holds a secret in plain text", o.kind(), o.name(), n)
						}
					}
					sensitive := strings.Contains(n, "SECRET") || strings.Contains(n, "PASSWORD") || strings.HasSuffix(n, "DATABASE_URL") || strings.HasSuffix(n, "MIGRATION_URL")
					if sensitive && dig(e, "valueFrom", "secretKeyRef") == nil {
						t.Errorf("%s %s env %s is not from a Secret", o.kind(), o.name(), n)
					}
				}
			}
		}
	}
}

// checkPlatformConfig: the platform's config file parses, listens on all
// interfaces of the pod, and carries publicURL.
func checkPlatformConfig(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		if o.kind() != "ConfigMap" || dig(o, "data", "platform.yaml") == nil {
			continue
		}
		var cfg map[string]any
		if err := yaml.Unmarshal([]byte(dig(o, "data", "platform.yaml").(string)), &cfg); err != nil {
			t.Fatalf("platform.yaml in ConfigMap %s: %v", o.name(), err)
		}
		if cfg["listen"] != "0.0.0.0:8080" || cfg["publicURL"] == nil {
			t.Errorf("platform.yaml: %v", cfg)
		}
		return
	}
	t.Error("no ConfigMap with platform.yaml")
}

func only(t *testing.T, objs []object, kind, name string) object {
	t.Helper()
	var found []object
	for _, o := range objs {
		if o.kind() == kind && (name == "" || o.name() == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s objects, want one", len(found), kind)
	}
	return found[0]
}

func envOf(o object) map[string]any {
	env := map[string]any{}
	for _, c := range list(dig(o, "spec", "template", "spec", "containers")) {
		for _, e := range list(dig(c, "env")) {
			n, _ := dig(e, "name").(string)
			env[n] = e
		}
	}
	return env
}

// TestChartRefusesMisconfiguration: more than one replica without an
// external database, and OIDC without a client secret, fail at render
// with the value to set.
func TestChartRefusesMisconfiguration(t *testing.T) {
	for _, c := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"replicas on the bundled database", map[string]any{"replicaCount": 2}, "replicaCount > 1 needs database.external.url"},
		{"oidc without a secret", map[string]any{"oidc": map[string]any{"issuer": "https://login.example.com", "clientID": "x"}}, "oidc.clientSecret"},
		{"billing without keys", map[string]any{"billing": map[string]any{"enabled": true}}, "billing.secretKey"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := render(t, c.values)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("render: %v, want an error naming %q", err, c.want)
			}
		})
	}
}

func TestMain(m *testing.M) {
	if _, err := os.Stat(filepath.Join(chartDir, "Chart.yaml")); err != nil {
		panic("run from deploy/helm/charttest: " + err.Error())
	}
	os.Exit(m.Run())
}
