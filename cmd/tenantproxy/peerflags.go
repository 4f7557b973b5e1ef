package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// peersValue is --peer: repeatable ID=HOST:PORT, or several joined by
// commas as the environment and the config file give a list.
type peersValue map[int]string

func (p *peersValue) Set(s string) error {
	if *p == nil {
		*p = peersValue{}
	}
	for _, item := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(item), "=")
		n, err := strconv.Atoi(id)
		if !ok || err != nil || addr == "" {
			return fmt.Errorf("peer %q: want ID=HOST:PORT", item)
		}
		if old, dup := (*p)[n]; dup && old != addr {
			return fmt.Errorf("peer %d given twice: %s and %s", n, old, addr)
		}
		(*p)[n] = addr
	}
	return nil
}

func (p *peersValue) String() string {
	items := make([]string, 0, len(*p))
	for id, addr := range *p {
		items = append(items, fmt.Sprintf("%d=%s", id, addr))
	}
	sort.Strings(items)
	return strings.Join(items, ",")
}

func (p *peersValue) Type() string { return "ID=HOST:PORT" }
