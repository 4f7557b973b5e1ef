package bench

import (
	"fmt"
	"html"
	"strings"
)

// Chart geometry, in SVG user units.
const (
	chartWidth  = 820
	labelWidth  = 130 // target names left of the bars
	valueWidth  = 150 // median and range right of the bars
	barHeight   = 18
	barGap      = 6
	panelTitle  = 26
	panelMargin = 14
)

// targetColors keep a target's colour the same in every chart.
var targetColors = map[string]string{
	TargetDirect:      "#4c78a8",
	TargetSession:     "#f58518",
	TargetTransaction: "#e45756",
	TargetPgBouncer:   "#54a24b",
}

// chart draws one scenario as an SVG: a panel per case and metric, a
// horizontal bar per target at its median with a whisker from min to max.
// Written by hand so that the tool needs no plotting dependency.
func chart(title string, targets []string, groups []*group) string {
	var body strings.Builder
	y := 40
	for _, g := range groups {
		scale := 0.0
		for _, r := range g.results {
			if r.ok() {
				scale = max(scale, r.Max)
			}
		}
		better := "lower is better"
		if len(g.results) > 0 && g.results[0].HigherIsBetter {
			better = "higher is better"
		}
		fmt.Fprintf(&body, `<text x="10" y="%d" class="panel">%s · %s (%s), %s</text>`+"\n",
			y+16, esc(g.caseName), esc(g.metric), esc(g.unit), better)
		y += panelTitle
		span := float64(chartWidth - labelWidth - valueWidth - 20)
		for _, r := range g.results {
			fmt.Fprintf(&body, `<text x="%d" y="%d" class="label">%s</text>`+"\n", labelWidth-8, y+13, esc(r.Target))
			switch {
			case !r.ok() || scale == 0:
				why := r.Skipped
				if len(r.Errors) > 0 {
					why = "failed: " + firstLine(r.Errors[0], 80)
				}
				fmt.Fprintf(&body, `<text x="%d" y="%d" class="note">%s</text>`+"\n", labelWidth, y+13, esc(why))
			default:
				x := func(v float64) float64 { return float64(labelWidth) + span*v/scale }
				color := targetColors[r.Target]
				if color == "" {
					color = "#888"
				}
				fmt.Fprintf(&body, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n",
					labelWidth, y, x(r.Median)-labelWidth, barHeight, color)
				mid := y + barHeight/2
				fmt.Fprintf(&body, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="whisker"/>`+"\n", x(r.Min), x(r.Max), mid, mid)
				for _, v := range []float64{r.Min, r.Max} {
					fmt.Fprintf(&body, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="whisker"/>`+"\n", x(v), x(v), mid-4, mid+4)
				}
				fmt.Fprintf(&body, `<text x="%.1f" y="%d" class="value">%s (%s–%s)</text>`+"\n",
					x(r.Max)+6, y+13, formatValue(r.Median), formatValue(r.Min), formatValue(r.Max))
			}
			y += barHeight + barGap
		}
		y += panelMargin
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n",
		chartWidth, y+10, chartWidth, y+10)
	b.WriteString(`<style>.title{font-size:16px;font-weight:bold}.panel{font-size:13px}.label{font-size:12px;text-anchor:end}` +
		`.value,.note{font-size:11px;fill:#333}.whisker{stroke:#222;stroke-width:1.2}</style>` + "\n")
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="24" class="title">%s</text>`+"\n", esc(title))
	fmt.Fprintf(&b, `<text x="%d" y="24" class="note" text-anchor="end">targets: %s; median, whisker min–max</text>`+"\n",
		chartWidth-10, esc(strings.Join(targets, ", ")))
	b.WriteString(body.String())
	b.WriteString("</svg>\n")
	return b.String()
}

func esc(s string) string { return html.EscapeString(s) }
