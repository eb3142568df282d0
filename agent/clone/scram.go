package clone

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// scramIterations matches PostgreSQL's default scram_iterations.
const scramIterations = 4096

// scramVerifier computes the SCRAM-SHA-256 verifier PostgreSQL stores for
// password. Sending the verifier instead of the password in CREATE/ALTER
// ROLE keeps the password out of the clone's server log, pg_stat_statements
// and pg_stat_activity.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, scramIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

// randomVerifier is a well-formed verifier that no password matches: what
// other login roles of a clone get, so production passwords do not work.
func randomVerifier() (string, error) {
	buf := make([]byte, 16+32+32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(buf[:16]), b64(buf[16:48]), b64(buf[48:])), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// saslPrep approximates RFC 4013 as PostgreSQL applies it to passwords:
// ASCII passwords are used as they are; otherwise non-ASCII spaces map to
// a space, "mapped to nothing" characters are dropped and the result is
// NFKC-normalized. Where PostgreSQL would find a prohibited character it
// uses the raw bytes, and so do we.
func saslPrep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return password
	}
	var b strings.Builder
	for _, r := range password {
		switch {
		case r == 0x00AD || r == 0x034F || r == 0x1806 || (r >= 0x180B && r <= 0x180D) ||
			r == 0x200B || r == 0x200C || r == 0x200D || r == 0x2060 || (r >= 0xFE00 && r <= 0xFE0F) || r == 0xFEFF:
			// mapped to nothing (RFC 3454 B.1)
		case r != ' ' && unicode.Is(unicode.Zs, r):
			b.WriteRune(' ')
		case unicode.IsControl(r) || unicode.Is(unicode.Co, r) || unicode.Is(unicode.Cs, r) || r == 0xFFFD:
			return password
		default:
			b.WriteRune(r)
		}
	}
	return norm.NFKC.String(b.String())
}
