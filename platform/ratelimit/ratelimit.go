// Package ratelimit is an in-memory token bucket per key (a client IP, a
// user ID). Buckets live in one process: with several platform replicas
// every replica counts on its own, so the effective limit is the
// configured one times the number of replicas.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Limit is a refill rate and a burst.
type Limit struct {
	// PerMinute tokens are added to a bucket each minute; 0 disables the
	// limit.
	PerMinute float64 `yaml:"perMinute"`
	// Burst is the bucket's size: how many calls pass at once after a
	// quiet period.
	Burst int `yaml:"burst"`
}

// Enabled reports whether the limit applies.
func (l Limit) Enabled() bool { return l.PerMinute > 0 && l.Burst > 0 }

// Limiter holds one bucket per key.
type Limiter struct {
	limit Limit
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// New returns a limiter for l (nil when l is disabled; a nil Limiter
// allows everything).
func New(l Limit) *Limiter {
	if !l.Enabled() {
		return nil
	}
	return &Limiter{limit: l, now: time.Now, buckets: map[string]*bucket{}}
}

// SetClock replaces the clock (tests).
func (l *Limiter) SetClock(now func() time.Time) { l.now = now }

// refill brings key's bucket up to date and returns it; l.mu is held.
func (l *Limiter) refill(key string) *bucket {
	now := l.now()
	l.sweep(now)
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: float64(l.limit.Burst), at: now}
		l.buckets[key] = b
		return b
	}
	b.tokens = math.Min(float64(l.limit.Burst), b.tokens+now.Sub(b.at).Minutes()*l.limit.PerMinute)
	b.at = now
	return b
}

// sweep drops full buckets now and then, so that memory stays bounded by
// the keys seen within one refill period.
func (l *Limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Minute {
		return
	}
	l.swept = now
	full := time.Duration(float64(l.limit.Burst) / l.limit.PerMinute * float64(time.Minute))
	for k, b := range l.buckets {
		if now.Sub(b.at) >= full {
			delete(l.buckets, k)
		}
	}
}

// retryAfter is how long until b holds one token again.
func (l *Limiter) retryAfter(b *bucket) time.Duration {
	need := 1 - b.tokens
	if need <= 0 {
		return 0
	}
	return time.Duration(need / l.limit.PerMinute * float64(time.Minute))
}

// Allow takes one token from key's bucket. When the bucket is empty it
// takes nothing and returns false and how long to wait.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key)
	if b.tokens < 1 {
		return false, l.retryAfter(b)
	}
	b.tokens--
	return true, 0
}

// Check reports whether key's bucket holds a token, without taking it
// (for limits on failures: check first, Spend only when the call failed).
func (l *Limiter) Check(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key)
	if b.tokens < 1 {
		return false, l.retryAfter(b)
	}
	return true, 0
}

// Spend takes one token from key's bucket if there is one.
func (l *Limiter) Spend(key string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.refill(key); b.tokens >= 1 {
		b.tokens--
	}
}

// RetryAfterSeconds rounds d up to whole seconds, at least 1, for the
// Retry-After header.
func RetryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
