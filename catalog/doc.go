// Package catalog owns the tenant model and its repository in the control
// database: tenants, backend servers, tenant login users and the provisioning
// outbox. It also provisions tenants in every isolation tier and keeps an LRU
// cache of look-ups that LISTEN/NOTIFY invalidates across processes, because
// every new client connection asks the catalog who its tenant is.
package catalog
