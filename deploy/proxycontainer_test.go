package deploy

import (
	"fmt"
	"net"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// flagInfo is one flag of a command as its --help shows it.
type flagInfo struct {
	takesValue bool
	// def is the default as --help prints it, quotes removed; empty when
	// --help prints none.
	def string
}

// cliFlags asks the built binary for the flags of each command once.
type cliFlags struct {
	bin       string
	byCommand map[string]map[string]flagInfo
}

// helpFlag matches a flag line of cobra's help: "  -o, --output string
// usage (default "table")"; a boolean flag has no type word.
var (
	helpFlag    = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: (\w+))?\s{2,}(.*)$`)
	helpDefault = regexp.MustCompile(`\(default "?(.*?)"?\)$`)
)

func (c *cliFlags) flags(t *testing.T, command []string) map[string]flagInfo {
	key := strings.Join(command, " ")
	if f, ok := c.byCommand[key]; ok {
		return f
	}
	out, err := exec.Command(c.bin, append(slices.Clone(command), "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("tenantproxy %s --help: %v\n%s", key, err, out)
	}
	if !strings.Contains(string(out), "tenantproxy "+key+" ") {
		t.Fatalf("tenantproxy %s is not a command:\n%s", key, out)
	}
	flags := map[string]flagInfo{}
	for _, line := range strings.Split(string(out), "\n") {
		m := helpFlag.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fi := flagInfo{takesValue: m[2] != ""}
		if d := helpDefault.FindStringSubmatch(m[3]); d != nil {
			fi.def = strings.Trim(d[1], "[]")
		}
		flags[m[1]] = fi
	}
	if len(flags) == 0 {
		t.Fatalf("tenantproxy %s --help lists no flags:\n%s", key, out)
	}
	c.byCommand[key] = flags
	return flags
}

// flagOfEnv is the flag an environment variable sets (cmd/tenantproxy's
// envName, inverted).
func flagOfEnv(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "TENANTPROXY_")
	return strings.ToLower(strings.ReplaceAll(rest, "_", "-")), ok
}

func isProxyImage(image string) bool {
	name, _, _ := strings.Cut(path.Base(image), ":")
	return name == "tenantproxy"
}

// checkProxyContainers checks every tenantproxy container of w against
// the real command line and returns how many there are.
func checkProxyContainers(t *testing.T, r *rendered, cli *cliFlags, w workload) int {
	n := 0
	for _, c := range allContainers(&w.pod.Spec) {
		if !isProxyImage(c.Image) {
			continue
		}
		n++
		where := fmt.Sprintf("%s container %s", w.name, c.Name)
		if len(c.Command) != 0 {
			t.Errorf("%s: sets command %v; the image's entrypoint is the binary, give args", where, c.Command)
		}
		command, args := splitCommand(c.Args)
		if len(command) == 0 {
			t.Errorf("%s: args %v name no command", where, c.Args)
			continue
		}
		settings := proxySettings(t, r, w, c, where, cli.flags(t, command), args)
		if command[0] == "serve" {
			checkServe(t, r, w, c, where, settings)
		}
		checkLockedDown(t, &w.pod.Spec, c, where)
	}
	return n
}

func splitCommand(args []string) (command, flags []string) {
	i := slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, "-") })
	if i < 0 {
		return args, nil
	}
	return args[:i], args[i:]
}

// proxySettings resolves what the container's proxy runs with, as the
// CLI does: the command line over TENANTPROXY_* variables over the config
// file over each flag's default. Every flag, variable and config key must
// exist in the command, and every file the settings name must be mounted.
func proxySettings(t *testing.T, r *rendered, w workload, c *corev1.Container, where string, flags map[string]flagInfo, args []string) map[string]string {
	fromArgs := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(strings.TrimPrefix(args[i], "--"), "=")
		fi, ok := flags[name]
		if !ok || !strings.HasPrefix(args[i], "--") {
			t.Errorf("%s: %s is not a flag of the command", where, args[i])
		}
		if (fi.takesValue || !ok) && !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
			val = args[i]
		}
		fromArgs[name] = val
	}
	fromEnv := map[string]string{}
	for _, e := range c.Env {
		name, ok := flagOfEnv(e.Name)
		if !ok {
			continue
		}
		if _, known := flags[name]; !known {
			t.Errorf("%s: %s sets no flag (--%s does not exist)", where, e.Name, name)
		}
		fromEnv[name] = e.Value
	}
	settings := map[string]string{}
	for name, fi := range flags {
		settings[name] = fi.def
	}
	if p := firstNonEmpty(fromArgs["config"], fromEnv["config"]); p != "" {
		var file map[string]any
		if raw, err := mountedFile(r, &w.pod.Spec, c, p); err != nil {
			t.Errorf("%s: --config %s: %v", where, p, err)
		} else if err := yaml.UnmarshalStrict(raw, &file); err != nil {
			t.Errorf("%s: --config %s: %v", where, p, err)
		}
		for name, v := range file {
			if _, ok := flags[name]; !ok {
				t.Errorf("%s: config file %s sets %q, which is not a flag of the command", where, p, name)
			}
			settings[name] = fmt.Sprint(v)
		}
	}
	for _, layer := range []map[string]string{fromEnv, fromArgs} {
		for name, v := range layer {
			settings[name] = v
		}
	}
	for _, name := range []string{"tls-cert", "tls-key", "secrets-key-file"} {
		if p := settings[name]; p != "" {
			if _, err := mountedFile(r, &w.pod.Spec, c, p); err != nil {
				t.Errorf("%s: --%s %s: %v", where, name, p, err)
			}
		}
	}
	return settings
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// mountedFile is the content of file p in container c when a ConfigMap
// holds it, and nil when a Secret does (its value is not in the
// manifests); an error when no volume of the pod holds it.
func mountedFile(r *rendered, spec *corev1.PodSpec, c *corev1.Container, p string) ([]byte, error) {
	for _, m := range c.VolumeMounts {
		key, ok := strings.CutPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok || strings.Contains(key, "/") {
			continue
		}
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return nil, fmt.Errorf("volume %s is not in the pod", m.Name)
		}
		switch v := spec.Volumes[i]; {
		case v.ConfigMap != nil:
			cm := r.configMaps[v.ConfigMap.Name]
			if cm == nil || cm.Data[key] == "" {
				return nil, fmt.Errorf("ConfigMap %s has no key %s", v.ConfigMap.Name, key)
			}
			return []byte(cm.Data[key]), nil
		case v.Secret != nil:
			if !secretKeys(r.secrets[v.Secret.SecretName])[key] {
				return nil, fmt.Errorf("Secret %s has no key %s", v.Secret.SecretName, key)
			}
			return nil, nil
		default:
			return nil, fmt.Errorf("volume %s is neither a ConfigMap nor a Secret", m.Name)
		}
	}
	return nil, fmt.Errorf("no volume is mounted there")
}

// adminShutdown is what serve allows its admin listener after the drain
// (cmd/tenantproxy stopProxy).
const adminShutdown = 5 * time.Second

// checkServe checks a container running serve: probes on the admin
// listener's endpoints (admin.Start: /healthz, /readyz) at the port it
// listens on, which the kubelet can reach; its listen ports declared; the
// preStop sleep, the drain and the admin shutdown within the grace
// period; and, when it is a Deployment's own proxy rather than a sidecar,
// spread, a disruption budget and an autoscaler.
func checkServe(t *testing.T, r *rendered, w workload, c *corev1.Container, where string, settings map[string]string) {
	host, adminPort, err := net.SplitHostPort(settings["admin-listen"])
	if err != nil {
		t.Errorf("%s: admin-listen %q: %v", where, settings["admin-listen"], err)
		return
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Errorf("%s: admin-listen %s is loopback; the kubelet's probes come from outside the pod", where, settings["admin-listen"])
	}
	for _, want := range []struct {
		kind, path string
		probe      *corev1.Probe
	}{{"readiness", "/readyz", c.ReadinessProbe}, {"liveness", "/healthz", c.LivenessProbe}} {
		switch p := want.probe; {
		case p == nil || p.HTTPGet == nil:
			t.Errorf("%s: no HTTP %s probe", where, want.kind)
		case p.HTTPGet.Path != want.path:
			t.Errorf("%s: %s probe on %s; want %s", where, want.kind, p.HTTPGet.Path, want.path)
		case fmt.Sprint(containerPort(c, p.HTTPGet.Port)) != adminPort:
			t.Errorf("%s: %s probe on port %s; admin-listen is on %s", where, want.kind, p.HTTPGet.Port.String(), adminPort)
		}
	}
	for _, addr := range strings.Split(settings["listen"], ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(addr))
		if err != nil {
			t.Errorf("%s: listen %q: %v", where, addr, err)
			continue
		}
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return fmt.Sprint(p.ContainerPort) == port }) {
			t.Errorf("%s: listens on %s but declares no container port %s", where, addr, port)
		}
	}
	checkGrace(t, &w.pod.Spec, c, where, settings["drain-timeout"])
	if !slices.ContainsFunc(w.pod.Spec.Containers, func(x corev1.Container) bool { return x.Name == c.Name }) {
		return
	}
	if len(w.pod.Spec.TopologySpreadConstraints) == 0 {
		t.Errorf("%s: no topology spread; replicas may share a node or zone", w.name)
	}
	podLabels := labels.Set(w.pod.Labels)
	if !slices.ContainsFunc(r.pdbs, func(p *policyv1.PodDisruptionBudget) bool { return mustSelector(t, p.Spec.Selector).Matches(podLabels) }) {
		t.Errorf("%s: no PodDisruptionBudget selects its pods", w.name)
	}
	if !slices.ContainsFunc(r.hpas, func(h *autoscalingv2.HorizontalPodAutoscaler) bool {
		return "Deployment "+h.Spec.ScaleTargetRef.Name == w.name
	}) {
		t.Errorf("%s: no HorizontalPodAutoscaler targets it", w.name)
	}
}

// checkGrace wants the preStop sleep (endpoints drop the pod before it
// stops accepting), the drain and the admin shutdown to end before the
// kubelet kills the container at terminationGracePeriodSeconds.
func checkGrace(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, where, drainSetting string) {
	drain, err := time.ParseDuration(drainSetting)
	if err != nil {
		t.Errorf("%s: drain-timeout %q: %v", where, drainSetting, err)
		return
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Errorf("%s: no preStop sleep; clients would be refused while endpoints still list the pod", where)
		return
	}
	sleep := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	grace := 30 * time.Second
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	if total := sleep + drain + adminShutdown; total >= grace {
		t.Errorf("%s: preStop %v + drain-timeout %v + admin shutdown %v = %v, not below terminationGracePeriodSeconds %v", where, sleep, drain, adminShutdown, total, grace)
	}
}

// checkLockedDown wants the proxy non-root, on a read-only root, without
// privilege escalation or capabilities, under the runtime's seccomp
// profile.
func checkLockedDown(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, where string) {
	pod := spec.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: no securityContext", where)
		return
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	if !isTrue(sc.RunAsNonRoot) && !isTrue(pod.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not set", where)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: root filesystem is writable", where)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: capabilities do not drop ALL", where)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccomp profile is not RuntimeDefault", where)
	}
}
