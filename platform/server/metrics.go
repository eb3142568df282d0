package server

import (
	"context"
	"time"
)

// Retention of agents' resource samples: samples as sent for two days,
// then hourly aggregates for 90 days.
const (
	MetricsRawRetention    = 48 * time.Hour
	MetricsHourRetention   = 90 * 24 * time.Hour
	metricsDownsampleEvery = 10 * time.Minute
)

// downsampleMetrics folds old samples into hourly aggregates every ten
// minutes until ctx ends (one replica at a time does the work).
func (s *Server) downsampleMetrics(ctx context.Context) {
	t := time.NewTicker(metricsDownsampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.store.DownsampleAgentMetrics(ctx, time.Now(), MetricsRawRetention, MetricsHourRetention)
		switch {
		case err != nil && ctx.Err() == nil:
			s.logger.Warn("downsample agents' metrics", "err", err)
		case n > 0:
			s.logger.Debug("agents' metrics downsampled", "samples", n)
		}
	}
}
