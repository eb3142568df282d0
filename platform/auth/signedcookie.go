package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// signer seals small JSON payloads into cookie values with HMAC-SHA256 and
// an expiry, so the login state survives the round trip to the IdP without
// server storage and cannot be forged or replayed after it expires.
type signer struct {
	key []byte
}

var errBadSignature = errors.New("signature invalid")
var errExpired = errors.New("expired")

type sealed struct {
	Exp  int64           `json:"exp"`
	Data json.RawMessage `json:"d"`
}

func newSigner(secret, purpose string) signer {
	// Derive a key per purpose so one cookie can never be passed off as
	// another.
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("thinlab/" + purpose))
	return signer{key: m.Sum(nil)}
}

func (s signer) seal(v any, ttl time.Duration, now time.Time) (string, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(sealed{Exp: now.Add(ttl).Unix(), Data: data})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding.EncodeToString(body)
	return enc + "." + base64.RawURLEncoding.EncodeToString(s.mac(enc)), nil
}

func (s signer) open(value string, v any, now time.Time) error {
	enc, sig, ok := strings.Cut(value, ".")
	if !ok {
		return errBadSignature
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(enc)) {
		return errBadSignature
	}
	body, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return errBadSignature
	}
	var sl sealed
	if err := json.Unmarshal(body, &sl); err != nil {
		return errBadSignature
	}
	if now.Unix() > sl.Exp {
		return errExpired
	}
	return json.Unmarshal(sl.Data, v)
}

func (s signer) mac(msg string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
