// Package pgsource turns retrieval.source into what PostgreSQL's tools
// need, without secrets on a command line: libpq parameters, handed to a
// tool as environment variables, database names only inside quoted
// connection strings, TLS files as private copies for the unprivileged OS
// user.
package pgsource

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/thinlab/thinlab/agent/config"
)

// libpqEnv maps connection parameters to the environment variables libpq
// reads. pg_dump gets the source only through these, so that nothing
// secret ever appears in a command line (ps, logs).
var libpqEnv = map[string]string{
	"host":                 "PGHOST",
	"hostaddr":             "PGHOSTADDR",
	"port":                 "PGPORT",
	"dbname":               "PGDATABASE",
	"user":                 "PGUSER",
	"password":             "PGPASSWORD",
	"passfile":             "PGPASSFILE",
	"sslmode":              "PGSSLMODE",
	"sslcert":              "PGSSLCERT",
	"sslkey":               "PGSSLKEY",
	"sslrootcert":          "PGSSLROOTCERT",
	"sslcrl":               "PGSSLCRL",
	"sslcompression":       "PGSSLCOMPRESSION",
	"requirepeer":          "PGREQUIREPEER",
	"connect_timeout":      "PGCONNECT_TIMEOUT",
	"application_name":     "PGAPPNAME",
	"options":              "PGOPTIONS",
	"target_session_attrs": "PGTARGETSESSIONATTRS",
	"channel_binding":      "PGCHANNELBINDING",
	"gssencmode":           "PGGSSENCMODE",
	"krbsrvname":           "PGKRBSRVNAME",
}

// Params resolves the configured source into libpq parameters. With a
// cloud IAM source (retrieval.source.auth) the password is not among
// them: agent/retrieval/cloudauth makes one for each connection.
func Params(s config.Source) (map[string]string, error) {
	p := map[string]string{}
	if s.ConnStr != "" {
		var err error
		if p, err = parseConnString(s.ConnStr); err != nil {
			return nil, fmt.Errorf("retrieval.source.connStr: %w", err)
		}
	} else {
		p["host"] = s.Host
		if s.Port != 0 {
			p["port"] = strconv.Itoa(s.Port)
		}
		if s.DBName != "" {
			p["dbname"] = s.DBName
		}
		p["user"] = s.Username
	}
	if pw := s.ResolvedPassword(); pw != "" {
		p["password"] = pw
	}
	if s.SSLRootCert != "" {
		p["sslrootcert"] = s.SSLRootCert
	}
	if s.SSLMode != "" {
		p["sslmode"] = s.SSLMode
	}
	// A CA given means the server must prove who it is.
	if p["sslmode"] == "" && p["sslrootcert"] != "" {
		p["sslmode"] = "verify-full"
	}
	for k := range p {
		if _, ok := libpqEnv[k]; !ok {
			return nil, fmt.Errorf("retrieval.source.connStr: parameter %q is not supported", k)
		}
	}
	if p["dbname"] == "" {
		p["dbname"] = "postgres"
	}
	return p, nil
}

// InsecureSSL says why the source connection does not authenticate the
// server ("" when it does): without verify-ca/verify-full anyone on the
// path can pose as the source and receive the retrieval credentials.
func InsecureSSL(p map[string]string) string {
	switch mode := p["sslmode"]; mode {
	case "verify-full", "verify-ca":
		return ""
	case "":
		return "sslmode is libpq's default, prefer, which is insecure: it does not verify the server and falls back to no TLS"
	default:
		return "sslmode=" + mode + " is insecure: it does not verify the server's certificate"
	}
}

// Env turns parameters into libpq environment variables; dbname is left
// to the caller (pg_dump is told each database with -d).
func Env(p map[string]string) []string {
	keys := slices.Sorted(maps.Keys(p))
	out := []string{"PGPASSFILE=/dev/null"} // only the configured password counts
	for _, k := range keys {
		if k == "dbname" {
			continue
		}
		out = append(out, libpqEnv[k]+"="+p[k])
	}
	return out
}

// PgxConnString builds a key/value connection string for pgx, without the
// password (set on the parsed config instead).
func PgxConnString(p map[string]string, db string) string {
	q := map[string]string{}
	for k, v := range p {
		switch k {
		case "password", "passfile", "requirepeer", "krbsrvname", "gssencmode", "sslcompression", "hostaddr", "options":
			continue
		}
		q[k] = v
	}
	q["dbname"] = db
	return Conninfo(q)
}

// Conninfo renders libpq key/value parameters as a connection string with
// every value quoted, so that no value (a database named
// "host=evil port=1", say) can add parameters. It is the only way the
// agent hands a database to pg_dump, pg_restore or psql: a bare -d NAME
// containing "=" would itself be read as a connection string.
func Conninfo(p map[string]string) string {
	keys := slices.Sorted(maps.Keys(p))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+quoteConnValue(p[k]))
	}
	return strings.Join(parts, " ")
}

func quoteConnValue(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// parseConnString parses a libpq connection string: key=value pairs or a
// postgres:// URI.
func parseConnString(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("not a valid URI (the error is not shown as it may contain the password)")
		}
		p := map[string]string{}
		if h := u.Hostname(); h != "" {
			p["host"] = h
		}
		if port := u.Port(); port != "" {
			p["port"] = port
		}
		if u.User != nil {
			p["user"] = u.User.Username()
			if pw, ok := u.User.Password(); ok {
				p["password"] = pw
			}
		}
		if db := strings.TrimPrefix(u.Path, "/"); db != "" {
			p["dbname"] = db
		}
		for k, v := range u.Query() {
			if len(v) > 0 {
				p[k] = v[len(v)-1]
			}
		}
		return p, nil
	}
	p := map[string]string{}
	i := 0
	for i < len(s) {
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i >= len(s) {
			break
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, fmt.Errorf("expected key=value at %q", s[i:min(len(s), i+10)])
		}
		key := strings.TrimSpace(s[i : i+eq])
		i += eq + 1
		for i < len(s) && s[i] == ' ' {
			i++
		}
		var val strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == '\'' {
					i++
					closed = true
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted value for %s", key)
			}
		} else {
			for i < len(s) && s[i] != ' ' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
				i++
			}
		}
		p[key] = val.String()
	}
	return p, nil
}
