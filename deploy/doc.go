// Package deploy holds what an operator deploys tenantproxy with: the
// release image (Dockerfile), the Kubernetes manifests (kustomize base and
// overlays), the Grafana dashboard and the Prometheus alert rules. It has
// no Go code of its own; its tests keep those files honest against the
// real binary: every manifest decodes strictly into the Kubernetes API
// types and names only flags, ports, Secrets and ConfigMaps that exist, and
// every metric the dashboard and the rules query is one that `serve`
// exports.
package deploy
