package clone

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgproto3"

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

// parsedVerifier is a SCRAM-SHA-256 verifier's parts.
type parsedVerifier struct {
	iterations           int
	salt                 string // base64, as the server sends it
	storedKey, serverKey []byte
}

func parseVerifier(v string) (parsedVerifier, error) {
	var p parsedVerifier
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	if !ok {
		return p, fmt.Errorf("not a SCRAM-SHA-256 verifier")
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier")
	}
	iter, salt, ok1 := strings.Cut(iterSalt, ":")
	stored, server, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier")
	}
	var err error
	if p.iterations, err = strconv.Atoi(iter); err != nil || p.iterations < 1 {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier iteration count")
	}
	if _, err := base64.StdEncoding.DecodeString(salt); err != nil {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier salt")
	}
	p.salt = salt
	if p.storedKey, err = base64.StdEncoding.DecodeString(stored); err != nil {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier key")
	}
	if p.serverKey, err = base64.StdEncoding.DecodeString(server); err != nil {
		return p, fmt.Errorf("malformed SCRAM-SHA-256 verifier key")
	}
	return p, nil
}

// verifierMatches reports whether password is the one verifier was made
// from (used once, to adopt a clone's verifier when migrating a state file
// that still holds the plaintext).
func verifierMatches(verifier, password string) bool {
	p, err := parseVerifier(verifier)
	if err != nil {
		return false
	}
	salt, _ := base64.StdEncoding.DecodeString(p.salt)
	salted, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, p.iterations, sha256.Size)
	if err != nil {
		return false
	}
	storedKey := sha256.Sum256(hmacSHA256(salted, "Client Key"))
	return hmac.Equal(storedKey[:], p.storedKey) && hmac.Equal(hmacSHA256(salted, "Server Key"), p.serverKey)
}

// probeSCRAM is the readiness check when the agent no longer has the
// password (it keeps only the verifier): it starts a SCRAM-SHA-256 login
// as user over TCP and checks that the server answers with the salt and
// iteration count of verifier, which proves the clone accepts TCP logins
// for user and authenticates them against exactly that verifier (an
// unknown user gets a made-up salt). It then hangs up without a proof.
func probeSCRAM(ctx context.Context, addr, user, db, verifier string) error {
	want, err := parseVerifier(verifier)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }() // a probe: nothing written is lost on close
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	f := pgproto3.NewFrontend(conn, conn)
	f.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": db}})
	if err := f.Flush(); err != nil {
		return err
	}
	msg, err := f.Receive()
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASL:
		if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
			return fmt.Errorf("the server offers %v, not SCRAM-SHA-256", m.AuthMechanisms)
		}
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("%s: %s (SQLSTATE %s)", m.Severity, m.Message, m.Code)
	default:
		return fmt.Errorf("the server did not ask for a SCRAM-SHA-256 password (it answered %T)", msg)
	}
	nonce := make([]byte, 18)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	clientNonce := base64.StdEncoding.EncodeToString(nonce)
	f.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=" + clientNonce)})
	if err := f.Flush(); err != nil {
		return err
	}
	if msg, err = f.Receive(); err != nil {
		return err
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return fmt.Errorf("unexpected answer to the SCRAM first message: %T", msg)
	}
	var salt, iter, serverNonce string
	for attr := range strings.SplitSeq(string(cont.Data), ",") {
		k, v, _ := strings.Cut(attr, "=")
		switch k {
		case "r":
			serverNonce = v
		case "s":
			salt = v
		case "i":
			iter = v
		}
	}
	if !strings.HasPrefix(serverNonce, clientNonce) {
		return fmt.Errorf("the server's SCRAM nonce does not extend ours")
	}
	if salt != want.salt || iter != strconv.Itoa(want.iterations) {
		return fmt.Errorf("user %s's password in the clone is not the one the agent set (its SCRAM salt differs)", user)
	}
	return nil
}
