package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newUsageCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var since string
	cmd := &cobra.Command{
		Use:   "usage [SUBDOMAIN] [--since T] [-o table|json|csv]",
		Short: "Tenants' hourly usage for billing: transactions, statements, server time, bytes, peak connections",
		Long: `Prints what every tenant (or SUBDOMAIN) used per hour, summed over the
proxy instances that served it, as serve flushes it to the catalog
(--usage-flush-interval, and once more after draining on SIGTERM).
--since takes an RFC 3339 time, a date (2026-11-29) or a duration back
from now (24h, the default).`,
		Args: cobra.MaximumNArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			from, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			tenant := ""
			if len(args) == 1 {
				tenant = args[0]
			}
			recs, err := c.Usage(cmd.Context(), tenant, from)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if cf.output == "csv" {
				return writeUsageCSV(out, recs)
			}
			return cf.emit(out, recs, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
				fmt.Fprintln(tw, "TENANT\tHOUR\tTRANSACTIONS\tSTATEMENTS\tSERVER_TIME_MS\tBYTES_IN\tBYTES_OUT\tPEAK_CONNECTIONS\t")
				for _, r := range recs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%d\t%d\t%d\t\n", r.Tenant, r.Hour.Format("2006-01-02 15:04Z"),
						r.Transactions, r.Statements, r.ServerTimeMS, r.BytesIn, r.BytesOut, r.PeakConnections)
				}
				return tw.Flush()
			})
		}),
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&cf.output, "output", "o", "table", "table for people, json or csv for scripts")
	cmd.Flags().StringVar(&since, "since", "24h", "from this time: RFC 3339, a date, or a duration back from now")
	return cmd
}

// parseSince reads --since.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time, a date (2006-01-02) or a duration (24h)", s)
}

func writeUsageCSV(w io.Writer, recs []catalog.UsageRecord) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"tenant", "hour", "transactions", "statements", "server_time_ms", "bytes_in", "bytes_out", "peak_connections", "storage_mb"})
	for _, r := range recs {
		storage := ""
		if r.StorageMB != nil {
			storage = strconv.FormatInt(*r.StorageMB, 10)
		}
		cw.Write([]string{r.Tenant, r.Hour.Format(time.RFC3339), strconv.FormatInt(r.Transactions, 10), strconv.FormatInt(r.Statements, 10),
			strconv.FormatFloat(r.ServerTimeMS, 'f', 3, 64), strconv.FormatInt(r.BytesIn, 10), strconv.FormatInt(r.BytesOut, 10),
			strconv.Itoa(r.PeakConnections), storage})
	}
	cw.Flush()
	return cw.Error()
}

// usageAPI serves GET /usage?tenant=T&since=S on the admin listener, as
// `tenantproxy usage -o json` prints it; 503 until cat holds the catalog
// (serve opens it after the admin listener, see serve.go).
func usageAPI(cat *atomic.Pointer[catalog.Catalog]) map[string]http.Handler {
	return map[string]http.Handler{"GET /usage": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := cat.Load()
		if c == nil {
			http.Error(w, "the tenant catalog has not been reached yet", http.StatusServiceUnavailable)
			return
		}
		since := r.URL.Query().Get("since")
		if since == "" {
			since = "24h"
		}
		from, err := parseSince(since, time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		recs, err := c.Usage(r.Context(), r.URL.Query().Get("tenant"), from)
		if err != nil {
			http.Error(w, "usage: the catalog did not answer", http.StatusServiceUnavailable)
			return
		}
		if recs == nil {
			recs = []catalog.UsageRecord{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(recs)
	})}
}
