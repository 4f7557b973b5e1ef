package chatapi

import (
	"math"
	"net/http"
	"strconv"
)

// Page is one page of a list, in keyset order. Next, when present, is the
// cursor for the following page: the "after" parameter of ascending lists,
// the "before" parameter of the newest-first message list.
type Page[T any] struct {
	Items []T    `json:"items"`
	Next  *int64 `json:"next,omitempty"`
}

const (
	defaultPageSize = 50
	maxPageSize     = 200
)

// pageOf trims one look-ahead row off items and turns it into Next.
func pageOf[T any](items []T, limit int, key func(T) int64) Page[T] {
	if items == nil {
		items = []T{}
	}
	p := Page[T]{Items: items}
	if len(items) > limit {
		p.Items = items[:limit]
		next := key(items[limit-1])
		p.Next = &next
	}
	return p
}

// keyset reads the cursor parameter (def when absent) and limit of a list
// request. Lists fetch limit+1 rows to know whether a next page exists.
func keyset(r *http.Request, cursor string, def int64) (int64, int, error) {
	c := def
	if v := r.URL.Query().Get(cursor); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, invalidParameter("%s must be a positive integer, not %q", cursor, v)
		}
		c = n
	}
	limit := defaultPageSize
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return 0, 0, invalidParameter("limit must be an integer from 1 to %d, not %q", maxPageSize, v)
		}
		limit = n
	}
	return c, limit, nil
}

// noCursor is the "before" of a first newest-first page.
const noCursor = math.MaxInt64

// pathID reads the positive integer id in path wildcard name.
func pathID(r *http.Request, name string) (int64, error) {
	v := r.PathValue(name)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, newProblem(http.StatusBadRequest, "invalid-id", "Invalid id", name+" id must be a positive integer, not \""+v+"\"")
	}
	return n, nil
}
