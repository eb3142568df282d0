// Package singlehost holds tests of the single-host layout, where the
// agent and the platform (with its embedded PostgreSQL) run on one machine.
// They import both agent and platform packages, which never import each
// other, so they live here; the package has no code of its own.
package singlehost
