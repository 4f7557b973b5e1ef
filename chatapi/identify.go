package chatapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// TenantHeader names the tenant when the Host does not.
const TenantHeader = "X-Tenant-ID"

// identify returns the tenant the request names: Host subdomain first, then
// X-Tenant-ID, then the /t/{tenant}/ path prefix. Every source present must
// name the same tenant; disagreement is an error, never a silent pick, as
// in the proxy.
func identify(baseDomain string, r *http.Request) (string, error) {
	type named struct{ source, tenant string }
	var found []named
	if host := fromHost(baseDomain, r.Host); host != "" {
		found = append(found, named{"Host", host})
	}
	for _, n := range []named{{TenantHeader, r.Header.Get(TenantHeader)}, {"path", r.PathValue("tenant")}} {
		if n.tenant == "" {
			continue
		}
		if err := catalog.ValidateSubdomain(n.tenant); err != nil {
			return "", invalidTenant(n.source, err)
		}
		found = append(found, n)
	}
	if len(found) == 0 {
		return "", newProblem(http.StatusBadRequest, "tenant-required", "No tenant in the request",
			fmt.Sprintf("name the tenant by Host <tenant>.%s, the %s header or the path prefix /t/{tenant}/", orExample(baseDomain), TenantHeader))
	}
	for _, n := range found[1:] {
		if n.tenant != found[0].tenant {
			return "", newProblem(http.StatusBadRequest, "conflicting-tenant", "Conflicting tenants",
				fmt.Sprintf("%s names %q but %s names %q", found[0].source, found[0].tenant, n.source, n.tenant))
		}
	}
	return found[0].tenant, nil
}

// fromHost returns the label of host directly under baseDomain. A host
// outside the base domain, or whose label cannot be a tenant (api, www, a
// reserved or malformed name), names no tenant: that is how the API itself
// is reached, as with the proxy's SNI.
func fromHost(baseDomain, host string) string {
	if baseDomain == "" || host == "" {
		return ""
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, ok := strings.CutSuffix(strings.ToLower(strings.TrimSuffix(host, ".")), "."+strings.ToLower(strings.Trim(baseDomain, ".")))
	if !ok || catalog.ValidateSubdomain(label) != nil {
		return ""
	}
	return label
}

func invalidTenant(source string, err error) *problem {
	detail := err.Error()
	var ve *catalog.ValidationError
	if errors.As(err, &ve) {
		detail = fmt.Sprintf("tenant %q in %s %s", ve.Value, source, ve.Reason)
	}
	return newProblem(http.StatusBadRequest, "invalid-tenant", "Invalid tenant id", detail)
}

func orExample(baseDomain string) string {
	if baseDomain == "" {
		return "<base-domain> (not configured)"
	}
	return baseDomain
}
