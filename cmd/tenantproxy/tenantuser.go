package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// passwordUsage explains --password on add and passwd. Like every flag it
// is also read from the environment (TENANTPROXY_PASSWORD), which keeps it
// out of shell history and of other users' ps.
const passwordUsage = "the password (prefer TENANTPROXY_PASSWORD: a command line stays in shell history and is visible to other local users); generated and printed once when empty"

func newTenantUserCommand(g *globals) *cobra.Command {
	user := &cobra.Command{
		Use:   "user",
		Short: "Manage a tenant's logins (people; a service's login belongs to its service)",
	}
	user.AddCommand(
		newTenantUserAddCommand(g),
		newTenantUserPasswdCommand(g),
		newTenantUserRemoveCommand(g),
		newTenantUserListCommand(g),
	)
	return user
}

// userPassword is what add and passwd print: the password only when it was
// generated.
type userPassword struct {
	Tenant   string `json:"tenant"`
	User     string `json:"user"`
	Role     string `json:"role,omitempty"`
	Password string `json:"password,omitempty"`
}

// emitPassword prints what add or passwd did, and a generated password once.
func (f *catalogFlags) emitPassword(cmd *cobra.Command, done string, up userPassword) error {
	out := cmd.OutOrStdout()
	return f.emit(out, up, func() error {
		fmt.Fprintf(out, "tenant %s: user %s %s\n", up.Tenant, up.User, done)
		if up.Password != "" {
			fmt.Fprintf(out, "password %s (shown once; only its SCRAM verifier is stored)\n", up.Password)
		}
		return nil
	})
}

func newTenantUserAddCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var password, role string
	cmd := &cobra.Command{
		Use:   "add SUBDOMAIN USER",
		Short: "Add a login to a tenant, within its plan's max_users",
		Long: "Adds a login that connects as USER.SUBDOMAIN (or USER with options=-c tenant=SUBDOMAIN).\n" +
			"Without --password (or TENANTPROXY_PASSWORD) a password is generated and printed once.",
		Args: cobra.ExactArgs(2),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			u, generated, err := c.AddUser(cmd.Context(), args[0], args[1], password, role)
			if err != nil {
				return err
			}
			return cf.emitPassword(cmd, "added as "+u.Role, userPassword{Tenant: u.TenantID, User: u.Username, Role: u.Role, Password: generated})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	cmd.Flags().StringVar(&password, "password", "", passwordUsage)
	cmd.Flags().StringVar(&role, "role", "member", "admin or member")
	return cmd
}

func newTenantUserPasswdCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var password string
	cmd := &cobra.Command{
		Use:   "passwd SUBDOMAIN USER",
		Short: "Change a login's password; new logins need it at once on every proxy, open sessions go on",
		Args:  cobra.ExactArgs(2),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			generated, err := c.SetPassword(cmd.Context(), args[0], args[1], password)
			if err != nil {
				return err
			}
			return cf.emitPassword(cmd, "password changed", userPassword{Tenant: args[0], User: args[1], Password: generated})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	cmd.Flags().StringVar(&password, "password", "", passwordUsage)
	return cmd
}

func newTenantUserRemoveCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   "remove SUBDOMAIN USER",
		Short: "Remove a login; its open sessions on every proxy end with 57P01",
		Args:  cobra.ExactArgs(2),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			if err := c.RemoveUser(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s: user %s removed\n", args[0], args[1])
			return nil
		}),
	}
	cf.register(cmd)
	return cmd
}

func newTenantUserListCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   "list SUBDOMAIN",
		Short: "List a tenant's logins (never their verifiers)",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			us, err := c.ListUsers(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, us, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "USER\tROLE\tCREATED")
				for _, u := range us {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", u.Username, u.Role, u.CreatedAt.Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	return cmd
}
