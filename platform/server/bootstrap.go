package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/thinlab/thinlab/platform/store"
)

// bootstrapTokenTTL is how long the bootstrap enrollment token is valid.
const bootstrapTokenTTL = 24 * time.Hour

// bootstrap makes the configured organization and, when asked and not
// made before, an enrollment token in a file only root can read.
func (s *Server) bootstrap(ctx context.Context) error {
	b := s.cfg.Bootstrap
	if b.Organization == "" {
		return nil
	}
	org, did, err := s.store.ReserveOrganization(ctx, b.Organization, "bootstrap")
	if err != nil {
		return fmt.Errorf("bootstrap.organization %s: %w", b.Organization, err)
	}
	if did == "created" {
		s.logger.Info("organization created by bootstrap", "org", org.Slug)
	}
	if b.EnrollmentTokenFile == "" {
		return nil
	}
	// O_EXCL: an existing file (a token of an earlier start, or anything
	// else) is never overwritten or followed.
	f, err := os.OpenFile(b.EnrollmentTokenFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bootstrap.enrollmentTokenFile: %w", err)
	}
	tok, secret, err := s.store.CreateEnrollmentToken(ctx, org.ID, "", "bootstrap", time.Now().Add(bootstrapTokenTTL), nil)
	if err == nil {
		_, err = f.WriteString(secret + "\n")
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(b.EnrollmentTokenFile) // half-written: the next start makes a new one
		return fmt.Errorf("bootstrap.enrollmentTokenFile: %w", err)
	}
	if err := s.store.AppendAuditEvent(ctx, &store.AuditEvent{
		OrgID: &org.ID, Actor: "bootstrap", Action: "enrollment_token.create", Target: tok.ID,
		Result: store.ResultSuccess, CreatedAt: time.Now().UTC(),
	}); err != nil {
		return fmt.Errorf("bootstrap: audit the enrollment token: %w", err)
	}
	s.logger.Info("bootstrap enrollment token written", "org", org.Slug, "file", b.EnrollmentTokenFile, "expires", tok.ExpiresAt)
	return nil
}
