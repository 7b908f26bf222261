{{/* Name prefix of every object: the release name, plus the chart name unless the release already has it. */}}
{{- define "loupe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "loupe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "loupe.labels" -}}
{{ include "loupe.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of the agent pods. Alloy's pipeline finds agents by app.kubernetes.io/name=loupe. */}}
{{- define "loupe.selector" -}}
app.kubernetes.io/name: {{ include "loupe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loupe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loupe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "loupe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The agent's capabilities: exactly the documented set (values.yaml, securityContext), plus the
opt-in ones.
*/}}
{{- define "loupe.capabilities" -}}
- BPF
- PERFMON
- SYS_PTRACE
- DAC_READ_SEARCH
{{- if .Values.agent.tcpContext.enabled }}
- NET_ADMIN
{{- end }}
{{- if .Values.securityContext.sysResource }}
- SYS_RESOURCE
{{- end }}
{{- if .Values.securityContext.sysAdmin }}
- SYS_ADMIN
{{- end }}
{{- end -}}

{{/*
The agent's TOML configuration: keys rendered from the values, then agent.extraConfig, whose keys
win. Keys come out sorted (range over a dict), one per line.
*/}}
{{- define "loupe.config" -}}
{{- $a := .Values.agent -}}
{{- $e := .Values.exporters -}}
{{- $host := $a.metricsHost -}}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end -}}
{{- $cfg := dict
  "profile_hz" $a.profileHz
  "profile_interval" $a.profileInterval
  "profile_debuginfo" $a.profileDebuginfo
  "page_faults" $a.pageFaults
  "page_fault_period" (int $a.pageFaultPeriod)
  "unwinder" $a.unwinder
  "unwind_tables_size" $a.unwindTablesSize
  "network_spans" $a.networkSpans
  "capture_bytes" $a.captureBytes
  "tls" $a.tls
  "logs" $a.logs
  "log_lines_per_sec" $a.logLinesPerSec
  "span_profiles" $a.spanProfiles
  "publish_trace_context" $a.publishTraceContext
  "tcp_context" $a.tcpContext.enabled
  "link_same_host" $a.linkSameHost
  "kubernetes" $a.kubernetes
  "metrics_addr" (printf "%s:%d" $host (int $a.metricsPort))
  "memory_limit" $a.memoryLimit
  "output_dir" "/var/lib/loupe"
-}}
{{- if eq $e.mode "alloy" -}}
{{- $_ := set $cfg "otlp_endpoint" (printf "http://%s:%d" $e.alloy.host (int $e.alloy.otlpPort)) -}}
{{- $_ := set $cfg "loki_url" (printf "http://%s:%d" $e.alloy.host (int $e.alloy.lokiPort)) -}}
{{- $_ := set $cfg "pyroscope_url" (printf "http://%s:%d" $e.alloy.host (int $e.alloy.pyroscopePort)) -}}
{{- else if eq $e.mode "direct" -}}
{{- if not (or $e.direct.otlpEndpoint $e.direct.lokiUrl $e.direct.pyroscopeUrl) -}}
{{- fail "exporters.mode is direct: set at least one of exporters.direct.otlpEndpoint, exporters.direct.lokiUrl, exporters.direct.pyroscopeUrl" -}}
{{- end -}}
{{- with $e.direct.otlpEndpoint }}{{ $_ := set $cfg "otlp_endpoint" . }}{{ end -}}
{{- with $e.direct.lokiUrl }}{{ $_ := set $cfg "loki_url" . }}{{ end -}}
{{- with $e.direct.pyroscopeUrl }}{{ $_ := set $cfg "pyroscope_url" . }}{{ end -}}
{{- end -}}
{{- with $e.loki.tenant }}{{ $_ := set $cfg "loki_tenant" . }}{{ end -}}
{{- with $e.loki.user }}{{ $_ := set $cfg "loki_user" . }}{{ end -}}
{{- with $e.pyroscope.tenant }}{{ $_ := set $cfg "pyroscope_tenant" . }}{{ end -}}
{{- with $e.pyroscope.user }}{{ $_ := set $cfg "pyroscope_user" . }}{{ end -}}
{{- with $e.otlp.tenant }}{{ $_ := set $cfg "otlp_tenant" . }}{{ end -}}
{{- with $e.otlp.user }}{{ $_ := set $cfg "otlp_user" . }}{{ end -}}
{{- range $backend := list "otlp" "loki" "pyroscope" }}
{{- if (index $e $backend).tokenSecret }}
{{- $_ := set $cfg (printf "%s_token_file" $backend) (printf "%s/%s/token" (include "loupe.tokenDir" $) $backend) }}
{{- end }}
{{- $tls := (index $e $backend).tls }}
{{- $dir := printf "%s/tls/%s" (include "loupe.tokenDir" $) $backend }}
{{- if $tls.caSecret }}{{ $_ := set $cfg (printf "%s_ca_file" $backend) (printf "%s/ca.crt" $dir) }}{{ end }}
{{- if $tls.clientCertSecret }}
{{- $_ := set $cfg (printf "%s_cert_file" $backend) (printf "%s/tls.crt" $dir) }}
{{- $_ := set $cfg (printf "%s_key_file" $backend) (printf "%s/tls.key" $dir) }}
{{- end }}
{{- with $tls.serverName }}{{ $_ := set $cfg (printf "%s_server_name" $backend) . }}{{ end }}
{{- end -}}
{{- with $a.tcpContext.trustedCidrs }}
{{- $_ := set $cfg "tcp_context_trusted" . }}
{{- end -}}
{{- with $a.debuginfod.url }}
{{- $_ := set $cfg "debuginfod_url" . }}
{{- $_ := set $cfg "debuginfod_cache_size" $a.debuginfod.cacheSize }}
{{- end -}}
{{- if $a.spool.enabled }}
{{- $_ := set $cfg "spool_dir" "/var/spool/loupe" }}
{{- $_ := set $cfg "spool_size" $a.spool.size }}
{{- end -}}
{{- $cfg = mergeOverwrite $cfg (deepCopy $a.extraConfig) -}}
# Rendered by the Loupe chart from its values; keys are `loupe-agent run` long flags with `_`.
{{- range $key, $value := $cfg }}
{{ $key }} = {{ include "loupe.tomlValue" $value }}
{{- end }}
{{- end -}}

{{/* A TOML value from a YAML one (strings, numbers, booleans and lists of them). */}}
{{- define "loupe.tomlValue" -}}
{{- if kindIs "string" . -}}
{{ . | quote }}
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "loupe.tomlValue" $v }}{{ end }}]
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}

{{/* Env vars of the exporters' credentials, from Secret references {name, key}. */}}
{{- define "loupe.credentialEnv" -}}
{{- $e := .Values.exporters -}}
{{- /* Tokens are mounted as files instead (loupe.tokenVolumes): rotated without a restart. */}}
{{- $refs := list
  (list "LOUPE_LOKI_PASSWORD" $e.loki.passwordSecret)
  (list "LOUPE_PYROSCOPE_PASSWORD" $e.pyroscope.passwordSecret)
  (list "LOUPE_OTLP_PASSWORD" $e.otlp.passwordSecret)
-}}
{{- range $refs }}
{{- $ref := index . 1 }}
{{- if $ref }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* MiB of a size written with Mi or Gi (the schema allows only those). */}}
{{- define "loupe.mib" -}}
{{- if hasSuffix "Gi" . }}{{ mul (trimSuffix "Gi" . | int) 1024 }}{{ else }}{{ trimSuffix "Mi" . | int }}{{ end -}}
{{- end -}}

{{/* The data volume: the local sink's files, plus the debuginfod cache when it is on. */}}
{{- define "loupe.dataSize" -}}
{{- $mib := 256 -}}
{{- if .Values.agent.debuginfod.url }}{{ $mib = add $mib (include "loupe.mib" .Values.agent.debuginfod.cacheSize | int) }}{{ end -}}
{{ $mib }}Mi
{{- end -}}

{{/* Checks across values that the schema cannot express; included by the DaemonSet. */}}
{{- define "loupe.validate" -}}
{{- $m := .Values.agent.memoryLimit -}}
{{- $mib := include "loupe.mib" $m | int -}}
{{- if lt (int $mib) 128 -}}
{{- fail (printf "agent.memoryLimit: %s is below 128Mi; the agent's kernel maps alone take about 60Mi" $m) -}}
{{- end -}}
{{- range $backend := list "otlp" "loki" "pyroscope" -}}
{{- $e := index $.Values.exporters $backend -}}
{{- if and $e.user (not $e.passwordSecret) -}}
{{- fail (printf "exporters.%s.user is set: exporters.%s.passwordSecret must name the Secret holding its password" $backend $backend) -}}
{{- end -}}
{{- if and $e.passwordSecret (not $e.user) -}}
{{- fail (printf "exporters.%s.passwordSecret is set: exporters.%s.user must be too" $backend $backend) -}}
{{- end -}}
{{- end -}}
{{- $e := .Values.exporters -}}
{{- $urls := dict "otlp" $e.direct.otlpEndpoint "loki" $e.direct.lokiUrl "pyroscope" $e.direct.pyroscopeUrl -}}
{{- range $backend := list "otlp" "loki" "pyroscope" -}}
{{- $tls := (index $e $backend).tls -}}
{{- if or $tls.caSecret $tls.clientCertSecret $tls.serverName -}}
{{- if not (and (eq $e.mode "direct") (hasPrefix "https://" (index $urls $backend))) -}}
{{- fail (printf "exporters.%s.tls is set: it needs exporters.mode=direct and an https:// endpoint for %s" $backend $backend) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.securityContext.runAsUser .Values.agent.publishTraceContext -}}
{{- fail "securityContext.runAsUser is not 0: agent.publishTraceContext pins a map in the host's /sys/fs/bpf, which only root may write; turn one of them off" -}}
{{- end -}}
{{- if and .Values.securityContext.runAsUser .Values.securityContext.privileged -}}
{{- fail "securityContext.runAsUser is not 0: the agent gets its capabilities from its file capabilities, not from securityContext.privileged; turn privileged off" -}}
{{- end -}}
{{- if and .Values.securityContext.privileged .Values.securityContext.seLinuxOptions -}}
{{- fail "securityContext.seLinuxOptions has no effect with securityContext.privileged (containerd drops SELinux options of privileged containers): set privileged to false" -}}
{{- end -}}
{{- end -}}

{{/* Where bearer-token Secrets are mounted, one folder per backend. */}}
{{- define "loupe.tokenDir" -}}
/var/run/secrets/loupe
{{- end -}}

{{/*
Volumes of the bearer-token Secrets: the whole folder is mounted (not a subPath), so the kubelet
updates it when the Secret is rotated and the agent reads the new token.
*/}}
{{- define "loupe.tokenVolumes" -}}
{{- range $backend := list "otlp" "loki" "pyroscope" }}
{{- with (index $.Values.exporters $backend).tokenSecret }}
- name: {{ $backend }}-token
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: token
{{- end }}
{{- $tls := (index $.Values.exporters $backend).tls }}
{{- if or $tls.caSecret $tls.clientCertSecret }}
- name: {{ $backend }}-tls
  projected:
    sources:
      {{- with $tls.caSecret }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key }}
              path: ca.crt
      {{- end }}
      {{- with $tls.clientCertSecret }}
      - secret:
          name: {{ .name }}
          items:
            - key: tls.crt
              path: tls.crt
            - key: tls.key
              path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "loupe.tokenMounts" -}}
{{- range $backend := list "otlp" "loki" "pyroscope" }}
{{- if (index $.Values.exporters $backend).tokenSecret }}
- name: {{ $backend }}-token
  mountPath: {{ include "loupe.tokenDir" $ }}/{{ $backend }}
  readOnly: true
{{- end }}
{{- $tls := (index $.Values.exporters $backend).tls }}
{{- if or $tls.caSecret $tls.clientCertSecret }}
- name: {{ $backend }}-tls
  mountPath: {{ include "loupe.tokenDir" $ }}/tls/{{ $backend }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}
