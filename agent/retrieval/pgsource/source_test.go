package pgsource

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/config"
)

func TestSourceSSLDefaults(t *testing.T) {
	p, err := Params(config.Source{Host: "db", Username: "u", SSLRootCert: "/etc/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if p["sslmode"] != "verify-full" || p["sslrootcert"] != "/etc/ca.pem" || InsecureSSL(p) != "" {
		t.Fatalf("with a CA: params %v, insecure %q; want sslmode verify-full", p, InsecureSSL(p))
	}
	p, _ = Params(config.Source{Host: "db", Username: "u"})
	if p["sslmode"] != "" || !strings.Contains(InsecureSSL(p), "prefer") {
		t.Fatalf("without a CA: params %v, insecure %q; want libpq's default named insecure", p, InsecureSSL(p))
	}
	p, _ = Params(config.Source{ConnStr: "host=db user=u sslmode=require"})
	if !strings.Contains(InsecureSSL(p), "sslmode=require is insecure") {
		t.Fatalf("sslmode=require: insecure %q", InsecureSSL(p))
	}
	p, _ = Params(config.Source{Host: "db", Username: "u", SSLRootCert: "/ca", SSLMode: "verify-ca"})
	if p["sslmode"] != "verify-ca" {
		t.Fatalf("explicit sslMode overridden: %v", p)
	}
}

func TestConninfoQuotesEverything(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"dbname": "host=127.0.0.2 port=1 dbname=postgres"}, `dbname='host=127.0.0.2 port=1 dbname=postgres'`},
		{map[string]string{"dbname": `it's \ odd`}, `dbname='it\'s \\ odd'`},
		{map[string]string{"dbname": "postgresql://evil/x"}, `dbname='postgresql://evil/x'`},
		{map[string]string{"user": "u", "dbname": "d"}, `dbname='d' user='u'`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			got := Conninfo(tc.in)
			if got != tc.want {
				t.Fatalf("Conninfo(%v) = %s, want %s", tc.in, got, tc.want)
			}
			// Read back with libpq's grammar (the agent's parser, and
			// pgx's for the database name): the same parameters.
			back, err := parseConnString(got)
			if err != nil || fmt.Sprint(back) != fmt.Sprint(tc.in) {
				t.Fatalf("%s parses back as %v (%v), want %v", got, back, err, tc.in)
			}
			cc, err := pgx.ParseConfig(got)
			if err != nil || cc.Database != tc.in["dbname"] {
				t.Fatalf("pgx reads %s as database %q (%v), want %q", got, cc.Database, err, tc.in["dbname"])
			}
		})
	}
}

func TestSourceParamsKeepSecretsOutOfArgs(t *testing.T) {
	p, err := Params(config.Source{ConnStr: "host=db.example.com port=5433 user='u ser' password='p w\\'d' dbname=app sslmode=require"})
	if err != nil {
		t.Fatal(err)
	}
	if p["password"] != "p w'd" || p["user"] != "u ser" || p["port"] != "5433" || p["sslmode"] != "require" {
		t.Fatalf("params %v", p)
	}
	e := strings.Join(Env(p), "\n")
	if !strings.Contains(e, "PGPASSWORD=p w'd") || !strings.Contains(e, "PGSSLMODE=require") || strings.Contains(e, "PGDATABASE") {
		t.Fatalf("env %q", e)
	}
	if cs := PgxConnString(p, "shop"); strings.Contains(cs, "p w") || !strings.Contains(cs, "dbname='shop'") || !strings.Contains(cs, "user='u ser'") {
		t.Fatalf("pgx conn string %q", cs)
	}
	if _, err := Params(config.Source{ConnStr: "host=x bogus=1"}); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Fatalf("unknown parameter: %v", err)
	}
	if _, err := Params(config.Source{ConnStr: "host='x"}); err == nil {
		t.Fatal("unterminated quote accepted")
	}
	u, err := Params(config.Source{ConnStr: "postgres://me:s3cret@h:7/db?sslmode=disable"})
	if err != nil || u["password"] != "s3cret" || u["host"] != "h" || u["port"] != "7" || u["dbname"] != "db" || u["sslmode"] != "disable" {
		t.Fatalf("uri params %v %v", u, err)
	}
}

// TestIAMSourceParams: a cloud IAM source's parameters name host, port
// and user (what the RDS token is signed for) and carry no password:
// agent/retrieval/cloudauth makes one for each connection.
func TestIAMSourceParams(t *testing.T) {
	src := config.Source{Host: "db.abc.eu-west-1.rds.amazonaws.com", Port: 5432, Username: "reader", IAM: "aws-rds", Region: "eu-west-1", SSLMode: "require"}
	p, err := Params(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p["password"]; ok || p["host"] != src.Host || p["port"] != "5432" || p["user"] != "reader" {
		t.Fatalf("params %v: want host, port, user and no password", p)
	}
	if e := strings.Join(Env(p), "\n"); strings.Contains(e, "PGPASSWORD") || !strings.Contains(e, "PGPASSFILE=/dev/null") {
		t.Fatalf("env %q: no password, and no password file either", e)
	}
}
