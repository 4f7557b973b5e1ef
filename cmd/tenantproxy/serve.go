package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newServeCommand(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Serve the proxy (arrives with issue #3)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("serve is not built yet: issue #3 brings it")
		},
	}
}

func newDemoCommand(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Throwaway PostgreSQL, demo tenants in every tier and the proxy (arrives with issue #3)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("demo is not built yet: issue #3 brings it")
		},
	}
}
