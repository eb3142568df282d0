package cloudauth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// signJWT returns the RS256-signed JWT of header and claims: the
// assertion Google's JWT-bearer grant and Microsoft's certificate
// credentials send.
func signJWT(key *rsa.PrivateKey, header, claims map[string]any) (string, error) {
	header["alg"] = "RS256"
	header["typ"] = "JWT"
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + enc.EncodeToString(sig), nil
}

// parseRSAKey reads the first private key of a PEM text (PKCS #8 as in
// Google's key files, or PKCS #1).
func parseRSAKey(pemText []byte) (*rsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, pemText = pem.Decode(pemText)
		if b == nil {
			return nil, errors.New("no PEM private key found")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key: %w", err)
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, errors.New("the private key is not an RSA key (RS256 needs one)")
			}
			return rk, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key: %w", err)
			}
			return k, nil
		}
	}
}
