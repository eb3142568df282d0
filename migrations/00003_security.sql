-- Security hardening (issue 8).

-- +goose Up
-- Whether the identity provider vouched for the email address (the
-- email_verified claim at the last sign-in). Invitations are bound to an
-- address, so only a verified one may accept them. Existing users count as
-- unverified until their next sign-in refreshes it.
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

-- Organizations that an identity provider's group mapping owns: created
-- (slug reserved) when the platform starts, so that nobody can register
-- the slug first and receive the group's members. Empty for others.
ALTER TABLE organizations ADD COLUMN managed_by text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE organizations DROP COLUMN managed_by;
ALTER TABLE users DROP COLUMN email_verified;
