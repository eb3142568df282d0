// Package tunnele2e holds the end-to-end tests and the benchmark of the
// agent tunnel: the agent's end (agent/tunnel) against the platform's end
// (platform/hub) over real TLS, real websockets and, where it matters, a
// real CONNECT proxy and a real PostgreSQL. It is the one place that links
// both sides; nothing but its tests imports it, so the wall between agent/
// and platform/ holds for the product.
package tunnele2e
