package ui

import (
	"fmt"
	"strings"
	"time"
)

// Chart is a line chart drawn as SVG on the server (readable without
// JavaScript): one or more series over time on a 0..Max scale, with an
// optional dashed threshold line (where an alert fires).
type Chart struct {
	ID        string
	Title     string
	Unit      string // "%", "MiB", ...
	Max       float64
	Threshold float64 // 0: none
	From, To  time.Time
	Series    []Series
	// Latest is the last value of each series, as text.
	Latest []string
}

// Series is one line.
type Series struct {
	Name   string
	Class  string // CSS class of the line: series-0, series-1, ...
	Points []ChartPoint
}

// ChartPoint is one value at one time.
type ChartPoint struct {
	At    time.Time
	Value float64
}

// Chart geometry (SVG user units).
const (
	chartW, chartH = 600.0, 160.0
	chartLeft      = 44.0
	chartBottom    = 20.0
)

func (c Chart) x(t time.Time) float64 {
	span := c.To.Sub(c.From).Seconds()
	if span <= 0 {
		return chartLeft
	}
	return chartLeft + (chartW-chartLeft)*t.Sub(c.From).Seconds()/span
}

func (c Chart) y(v float64) float64 {
	if c.Max <= 0 {
		return chartH - chartBottom
	}
	v = min(max(v, 0), c.Max)
	return (chartH - chartBottom) * (1 - v/c.Max)
}

// Polyline is the points attribute of series s.
func (c Chart) Polyline(s Series) string {
	var b strings.Builder
	for i, p := range s.Points {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", c.x(p.At), c.y(p.Value))
	}
	return b.String()
}

// ThresholdY is the y of the threshold line.
func (c Chart) ThresholdY() string { return fmt.Sprintf("%.1f", c.y(c.Threshold)) }

// ViewBox is the SVG viewBox.
func (c Chart) ViewBox() string { return fmt.Sprintf("0 0 %.0f %.0f", chartW, chartH) }

// Axis labels: the scale's top and the time range's ends.
func (c Chart) MaxLabel() string  { return trimFloat(c.Max) + c.Unit }
func (c Chart) FromLabel() string { return c.From.UTC().Format("Jan 2 15:04") }
func (c Chart) ToLabel() string   { return c.To.UTC().Format("Jan 2 15:04 UTC") }

// Empty reports a chart without any point.
func (c Chart) Empty() bool {
	for _, s := range c.Series {
		if len(s.Points) > 0 {
			return false
		}
	}
	return true
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.1f", v)
	return strings.TrimSuffix(s, ".0")
}

// AgentMetrics is an agent's resource page.
type AgentMetrics struct {
	AgentID   string
	AgentName string
	Range     string // "24h", "7d", "30d"
	Ranges    []string
	Base      string
	Host      []Chart
	Pools     []Chart
	Clones    []CloneUse
	// Note says why there is nothing to show, when there is not.
	Note string
}

// CloneUse is one clone's latest resource figures.
type CloneUse struct {
	ID          string
	Href        string
	CPU         string
	Memory      string
	Connections int
}
