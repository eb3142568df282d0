package ratelimit

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	l := New(Limit{PerMinute: 6, Burst: 3}) // one token every 10 s
	l.SetClock(func() time.Time { return now })
	for i := range 3 {
		if ok, _ := l.Allow("a"); !ok {
			t.Fatalf("call %d of a burst of 3 refused", i+1)
		}
	}
	ok, wait := l.Allow("a")
	if ok || wait != 10*time.Second {
		t.Fatalf("4th call: ok=%v wait=%s, want refused with 10s to wait", ok, wait)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("another key shares a's bucket")
	}
	now = now.Add(10 * time.Second)
	if ok, _ := l.Check("a"); !ok {
		t.Fatal("no token after one refill period")
	}
	l.Spend("a")
	if ok, wait := l.Check("a"); ok || RetryAfterSeconds(wait) != 10 {
		t.Fatalf("after Spend: ok=%v wait=%s, want refused for 10s", ok, wait)
	}
	if New(Limit{}) != nil {
		t.Fatal("a zero limit must disable limiting")
	}
	var off *Limiter
	if ok, _ := off.Allow("x"); !ok {
		t.Fatal("a nil limiter must allow")
	}
}
