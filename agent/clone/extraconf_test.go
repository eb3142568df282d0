package clone

import (
	"errors"
	"strings"
	"testing"
)

// TestExtraConfQuotes: statement_timeout='1s' (as DLE's CLI sends
// --extra-config statement_timeout='1s') and statement_timeout=1s are the
// same setting; a forbidden or unknown setting is refused and named,
// quoted or not.
func TestExtraConfQuotes(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1s", "1s"},
		{"'1s'", "1s"},
		{`"1s"`, "1s"},
		{" '64MB' ", "64MB"},
	} {
		got, err := normalizeExtraConf(map[string]string{"statement_timeout": tc.in})
		if err != nil || got["statement_timeout"] != tc.want {
			t.Fatalf("statement_timeout=%s: %v %v, want %q", tc.in, got, err, tc.want)
		}
	}
	if got, err := normalizeExtraConf(map[string]string{"application_name": "'it''s'"}); err == nil && got["application_name"] != "it's" {
		t.Fatalf("doubled quote: %q", got["application_name"])
	}
	for _, tc := range []struct{ key, val, msg string }{
		{"shared_preload_libraries", "'evil'", "shared_preload_libraries"},
		{"archive_command", "'rm -rf /'", "archive_command"},
		{"statement_timeout", "'1s; DROP'", "not a valid value"},
		{"statement_timeout", "'1s", "not a valid value"},
	} {
		_, err := normalizeExtraConf(map[string]string{tc.key: tc.val})
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != "extra_conf."+tc.key || !strings.Contains(ve.Message, tc.msg) {
			t.Fatalf("%s=%s: %v, want a ValidationError on extra_conf.%s saying %q", tc.key, tc.val, err, tc.key, tc.msg)
		}
	}
}
