// Package fleete2e holds the end-to-end tests of agents working through
// the platform: a real agent (agent.New on a real btrfs loop pool, real
// PostgreSQL clones) enrolls into a real platform server (real database,
// its own hub), and the platform's API, engine proxy and web UI (in a
// real browser, signed in through Dex) act on its clones over the
// tunnel. Tests that must kill an agent in the middle of an operation run
// it in its own process (this test binary, started again in agent mode by
// TestMain) on the same pool and state directory. It links both sides; nothing but its tests imports it, so the
// wall between agent/ and platform/ holds for the product.
package fleete2e
