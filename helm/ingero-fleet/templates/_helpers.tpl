{{/* Chart name, overridable. */}}
{{- define "ingero-fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; `helm install ingero-fleet` gives "ingero-fleet", as the guide assumes. */}}
{{- define "ingero-fleet.fullname" -}}
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

{{- define "ingero-fleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ingero-fleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ingero-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ingero-fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The port of a "host:port" listen address. */}}
{{- define "ingero-fleet.port" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}

{{/* The host of a "host:port" or "[v6]:port" listen address. */}}
{{- define "ingero-fleet.host" -}}
{{- regexReplaceAll ":[0-9]+$" . "" | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/*
The plugin configuration as JSON. `--set config.threshold.k=2.5` arrives as the
string "2.5" (helm parses only integers), so fractional keys are made numbers.
With observe.upstream the filter runs in observe mode (forwards and scores).
*/}}
{{- define "ingero-fleet.pluginConfig" -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c.threshold "k" (float64 $c.threshold.k) -}}
{{- $_ := set $c.threshold "ema_alpha" (float64 $c.threshold.ema_alpha) -}}
{{- $_ := set $c.quorum "coverage_fraction" (float64 $c.quorum.coverage_fraction) -}}
{{- if .Values.observe.upstream -}}
{{- $_ := set $c "mode" "observe" -}}
{{- end -}}
{{- toJson $c -}}
{{- end -}}

{{/* Where the pods mount the filter binary, TLS files and the client CA. */}}
{{- define "ingero-fleet.wasmPath" -}}
/etc/ingero-fleet/wasm/ingero_fleet_wasm.wasm
{{- end -}}
{{- define "ingero-fleet.tlsDir" -}}
/etc/ingero-fleet/tls
{{- end -}}
{{- define "ingero-fleet.clientCADir" -}}
/etc/ingero-fleet/client-ca
{{- end -}}

{{/* Where the module comes from: url, configmap (existing) or chart (files/). */}}
{{- define "ingero-fleet.wasmSource" -}}
{{- if .Values.wasm.url -}}url
{{- else if .Values.wasm.existingConfigMap -}}configmap
{{- else -}}chart
{{- end -}}
{{- end -}}

{{/*
The module the chart carries: files/ingero_fleet_wasm.wasm, or one clear error.
Not `fail`: helm lint only logs a `fail`, so a missing module would pass lint;
an include of a missing template is an error in lint and template alike, and
its name is the message.
*/}}
{{- define "ingero-fleet.chartWasm" -}}
{{- $wasm := .Files.Get "files/ingero_fleet_wasm.wasm" -}}
{{- if not $wasm -}}
{{- $the_filter_module := "files/ingero_fleet_wasm.wasm is missing: run scripts/build first (it copies the built filter into helm/ingero-fleet/files/), install the packaged chart from scripts/release, or use a mode without it: wasm.url + wasm.sha256, wasm.existingConfigMap, or standalone.enabled=true" -}}
{{- include $the_filter_module . -}}
{{- end -}}
{{- $wasm -}}
{{- end -}}

{{/* Where TLS for agents terminates: "lb" (the hash front), "replica" (one replica, no front) or "". */}}
{{- define "ingero-fleet.tlsAt" -}}
{{- if .Values.tls.enabled -}}
{{- if include "ingero-fleet.lbEnabled" . -}}lb{{- else -}}replica{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The SDS resources for the entry's TLS: certificate and (for mTLS) client CA,
read from the mounted Secrets and reloaded when the kubelet swaps the files
(watched_directory follows the ..data symlink swap), so rotated certificates
apply without a restart. Keys: file names in the Envoy ConfigMap.
*/}}
{{- define "ingero-fleet.sdsFiles" -}}
{{- $tls := include "ingero-fleet.tlsDir" . -}}
{{- $ca := include "ingero-fleet.clientCADir" . -}}
tls-certificate.yaml: |
  resources:
    - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
      name: ingero_fleet_tls
      tls_certificate:
        certificate_chain: { filename: {{ $tls }}/tls.crt }
        private_key: { filename: {{ $tls }}/tls.key }
        watched_directory: { path: {{ $tls }} }
{{- if .Values.tls.clientCA.secretName }}
client-ca.yaml: |
  resources:
    - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
      name: ingero_fleet_client_ca
      validation_context:
        trusted_ca: { filename: {{ $ca }}/{{ .Values.tls.clientCA.key }} }
        watched_directory: { path: {{ $ca }} }
{{- end }}
{{- end -}}

{{/* The push listener's TLS transport socket (args: root context, the config dir holding the SDS files). */}}
{{- define "ingero-fleet.tlsTransportSocket" -}}
{{- $ := index . 0 -}}
{{- $dir := index . 1 -}}
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  require_client_certificate: {{ ne $.Values.tls.clientCA.secretName "" }}
  common_tls_context:
    alpn_protocols: [h2, http/1.1]
    tls_certificate_sds_secret_configs:
      - name: ingero_fleet_tls
        sds_config:
          resource_api_version: V3
          path_config_source:
            path: {{ $dir }}/tls-certificate.yaml
            watched_directory: { path: {{ include "ingero-fleet.tlsDir" $ }} }
    {{- if $.Values.tls.clientCA.secretName }}
    validation_context_sds_secret_config:
      name: ingero_fleet_client_ca
      sds_config:
        resource_api_version: V3
        path_config_source:
          path: {{ $dir }}/client-ca.yaml
          watched_directory: { path: {{ include "ingero-fleet.clientCADir" $ }} }
    {{- end }}
{{- end -}}

{{/*
The chart's Envoy values on a parsed config (replicas' or front's), in place.
The overload manager, timeouts, stream caps and access log are the files'
(envoy/envoy.yaml, envoy/front-lb.yaml; docs/limits-envoy.md); the chart sets
their numbers from values sized to the pods' memory limits: the heap budget
and connection cap, and on every connection manager the timeouts and the
HTTP/2 stream cap. envoy.accessLog=false removes the access log. The
defaults are the files' own numbers. Args: root context, config, heap bytes.
*/}}
{{- define "ingero-fleet.hardenEnvoy" -}}
{{- $ := index . 0 -}}
{{- $envoy := index . 1 -}}
{{- $e := $.Values.envoy -}}
{{- $heap := index . 2 | int64 -}}
{{- /* SDS (the TLS files) needs a node identity. */ -}}
{{- $_ := set $envoy "node" ($envoy.node | default (dict "id" (include "ingero-fleet.fullname" $) "cluster" (include "ingero-fleet.fullname" $))) -}}
{{- if not $envoy.overload_manager -}}
{{- fail "the chart's Envoy config has no overload_manager (envoy/envoy.yaml and envoy/front-lb.yaml carry one)" -}}
{{- end -}}
{{- range $monitor := $envoy.overload_manager.resource_monitors -}}
{{- if eq $monitor.name "envoy.resource_monitors.fixed_heap" -}}
{{- $_ := set $monitor.typed_config "max_heap_size_bytes" $heap -}}
{{- end -}}
{{- if eq $monitor.name "envoy.resource_monitors.global_downstream_max_connections" -}}
{{- $_ := set $monitor.typed_config "max_active_downstream_connections" ($e.maxDownstreamConnections | int64) -}}
{{- end -}}
{{- end -}}
{{- range $listener := $envoy.static_resources.listeners -}}
{{- range $chain := $listener.filter_chains -}}
{{- range $filter := $chain.filters -}}
{{- if eq $filter.name "envoy.filters.network.http_connection_manager" -}}
{{- $hcm := $filter.typed_config -}}
{{- $_ := set $hcm "request_headers_timeout" $e.requestHeadersTimeout -}}
{{- $_ := set $hcm "request_timeout" $e.requestTimeout -}}
{{- $_ := set $hcm "stream_idle_timeout" $e.streamIdleTimeout -}}
{{- $_ := set $hcm "common_http_protocol_options" (merge (dict "idle_timeout" $e.idleTimeout) ($hcm.common_http_protocol_options | default dict)) -}}
{{- $_ := set $hcm "http2_protocol_options" (merge (dict "max_concurrent_streams" ($e.maxConcurrentStreams | int64)) ($hcm.http2_protocol_options | default dict)) -}}
{{- if not $e.accessLog -}}
{{- $_ := unset $hcm "access_log" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The replicas' Envoy config: envoy/envoy.yaml (files/envoy.yaml links to it), or
envoy/envoy-observe.yaml with observe.upstream (its otel_collector cluster set
to the upstream), with
the listeners on config.listen, the module, the plugin configuration and the
chart's Envoy settings (hardenEnvoy). The listener, path and plugin rewrites are
the ones tests/fleet.py render_envoy makes, so the chart runs the configuration
the end-to-end tests run.
*/}}
{{- define "ingero-fleet.envoyConfig" -}}
{{- $file := ternary "envoy-observe.yaml" "envoy.yaml" (ne .Values.observe.upstream "") -}}
{{- $envoy := .Files.Get (printf "files/%s" $file) | fromYaml -}}
{{- if not $envoy.static_resources -}}
{{- fail (printf "files/%s is missing or invalid (it links to envoy/%s)" $file $file) -}}
{{- end -}}
{{- $listen := .Values.config.listen -}}
{{- $plugin := include "ingero-fleet.pluginConfig" . -}}
{{- $source := include "ingero-fleet.wasmSource" . -}}
{{- $code := dict "local" (dict "filename" (include "ingero-fleet.wasmPath" .)) -}}
{{- if eq $source "url" -}}
{{- $code = dict "remote" (dict "http_uri" (dict "uri" .Values.wasm.url "cluster" "ingero_fleet_wasm_source" "timeout" "30s") "sha256" .Values.wasm.sha256 "retry_policy" (dict "num_retries" 10)) -}}
{{- end -}}
{{- $tls := eq (include "ingero-fleet.tlsAt" .) "replica" -}}
{{- range $listener := $envoy.static_resources.listeners -}}
{{- $addr := get $listen $listener.name | required (printf "config.listen.%s is required" $listener.name) -}}
{{- $_ := set $listener.address.socket_address "address" (include "ingero-fleet.host" $addr) -}}
{{- $_ := set $listener.address.socket_address "port_value" (include "ingero-fleet.port" $addr | int) -}}
{{- range $chain := $listener.filter_chains -}}
{{- if and $tls (eq $listener.name "otlp_http") -}}
{{- $_ := set $chain "transport_socket" (include "ingero-fleet.tlsTransportSocket" (list $ "/etc/ingero-fleet/config") | fromYaml) -}}
{{- end -}}
{{- range $filter := $chain.filters -}}
{{- range $http := $filter.typed_config.http_filters | default list -}}
{{- if eq $http.name "envoy.filters.http.wasm" -}}
{{- $_ := set $http.typed_config.config.configuration "value" $plugin -}}
{{- $_ := set $http.typed_config.config.vm_config "code" (deepCopy $code) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $clusters := $envoy.static_resources.clusters | default list -}}
{{- range $cluster := $clusters -}}
{{- if eq $cluster.name "otel_collector" -}}
{{- /* Observe mode: the user's collector, resolved by DNS. */ -}}
{{- $_ := set $cluster "type" "STRICT_DNS" -}}
{{- $endpoint := dict "address" (dict "socket_address" (dict "address" (include "ingero-fleet.host" $.Values.observe.upstream) "port_value" (include "ingero-fleet.port" $.Values.observe.upstream | int))) -}}
{{- $_ := set $cluster.load_assignment "endpoints" (list (dict "lb_endpoints" (list (dict "endpoint" $endpoint)))) -}}
{{- end -}}
{{- end -}}
{{- if eq $source "url" -}}
{{- $u := urlParse .Values.wasm.url -}}
{{- $https := eq $u.scheme "https" -}}
{{- $host := regexReplaceAll ":[0-9]+$" $u.host "" -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $u.host) | default (ternary "443" "80" $https) -}}
{{- $clusters = append $clusters (include "ingero-fleet.dnsCluster" (list "ingero_fleet_wasm_source" $host $port $https) | fromYaml) -}}
{{- end -}}
{{- if $clusters -}}
{{- $_ := set $envoy.static_resources "clusters" $clusters -}}
{{- end -}}
{{- include "ingero-fleet.hardenEnvoy" (list . $envoy (.Values.envoy.maxHeapBytes | int64)) -}}
{{- toYaml $envoy -}}
{{- end -}}

{{/* A STRICT_DNS cluster of one host:port (args: name, host, port, TLS with SNI). */}}
{{- define "ingero-fleet.dnsCluster" -}}
{{- $name := index . 0 }}{{ $host := index . 1 }}{{ $port := index . 2 -}}
name: {{ $name }}
connect_timeout: 5s
type: STRICT_DNS
dns_lookup_family: V4_PREFERRED
load_assignment:
  cluster_name: {{ $name }}
  endpoints:
    - lb_endpoints:
        - endpoint: { address: { socket_address: { address: {{ $host | quote }}, port_value: {{ $port }} } } }
{{- if index . 3 }}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: {{ $host | quote }}
{{- end }}
{{- end -}}

{{/*
The front load balancer's Envoy config: envoy/front-lb.yaml with one endpoint
per replica in each of its clusters (stable pod DNS name, hash key = pod name,
the replicas' push or API port), listeners on the same ports, TLS on the push listener when tls.enabled, and
the chart's Envoy settings (hardenEnvoy).
*/}}
{{- define "ingero-fleet.lbConfig" -}}
{{- $lb := .Files.Get "files/front-lb.yaml" | fromYaml -}}
{{- if not $lb.static_resources -}}
{{- fail "files/front-lb.yaml is missing or invalid (it links to envoy/front-lb.yaml)" -}}
{{- end -}}
{{- $fullname := include "ingero-fleet.fullname" . -}}
{{- $pushPort := include "ingero-fleet.port" .Values.config.listen.otlp_http | int -}}
{{- $ports := dict "ingero_fleet_listener" $pushPort "ingero_fleet_api" (include "ingero-fleet.port" .Values.config.listen.api | int) -}}
{{- range $listener := $lb.static_resources.listeners -}}
{{- $_ := set $listener.address.socket_address "port_value" (get $ports $listener.name | required (printf "unexpected listener %s in files/front-lb.yaml" $listener.name)) -}}
{{- if and $.Values.tls.enabled (eq $listener.name "ingero_fleet_listener") -}}
{{- range $chain := $listener.filter_chains -}}
{{- $_ := set $chain "transport_socket" (include "ingero-fleet.tlsTransportSocket" (list $ "/etc/ingero-fleet/envoy") | fromYaml) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $clusterPorts := dict "ingero_fleet" $pushPort "ingero_fleet_api" (get $ports "ingero_fleet_api") -}}
{{- range $cluster := $lb.static_resources.clusters -}}
{{- $port := get $clusterPorts $cluster.name | required (printf "unexpected cluster %s in files/front-lb.yaml" $cluster.name) -}}
{{- $endpoints := list -}}
{{- range $i := until (int $.Values.replicaCount) -}}
{{- $pod := printf "%s-%d" $fullname $i -}}
{{- $host := printf "%s.%s.%s.svc.%s" $pod $fullname $.Release.Namespace $.Values.clusterDomain -}}
{{- $endpoint := dict "address" (dict "socket_address" (dict "address" $host "port_value" $port)) -}}
{{- $metadata := dict "filter_metadata" (dict "envoy.lb" (dict "hash_key" $pod)) -}}
{{- $endpoints = append $endpoints (dict "endpoint" $endpoint "metadata" $metadata) -}}
{{- end -}}
{{- $_ := set $cluster.load_assignment "endpoints" (list (dict "lb_endpoints" $endpoints)) -}}
{{- end -}}
{{- include "ingero-fleet.hardenEnvoy" (list . $lb (.Values.lb.maxHeapBytes | int64)) -}}
{{- toYaml $lb -}}
{{- end -}}

{{/*
The standalone server's config.yaml: the plugin configuration, plus the
server's `tls:` keys when agents' TLS terminates at the replica.
*/}}
{{- define "ingero-fleet.serverConfig" -}}
{{- $c := include "ingero-fleet.pluginConfig" . | fromJson -}}
{{- if eq (include "ingero-fleet.tlsAt" .) "replica" -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "ingero-fleet.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "ingero-fleet.tlsDir" .)) -}}
{{- if .Values.tls.clientCA.secretName -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" (include "ingero-fleet.clientCADir" .) .Values.tls.clientCA.key) -}}
{{- end -}}
{{- $_ := set $c "tls" $tls -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The replicas' configuration file: the Envoy config, or the standalone server's config.yaml. */}}
{{- define "ingero-fleet.podConfig" -}}
{{- if .Values.standalone.enabled -}}
{{- include "ingero-fleet.serverConfig" . -}}
{{- else -}}
{{- include "ingero-fleet.envoyConfig" . -}}
{{- end -}}
{{- end -}}

{{- define "ingero-fleet.configFile" -}}
{{- ternary "config.yaml" "envoy.yaml" (.Values.standalone.enabled | default false) -}}
{{- end -}}

{{- define "ingero-fleet.configMapName" -}}
{{- include "ingero-fleet.fullname" . }}-{{ ternary "config" "envoy" (.Values.standalone.enabled | default false) -}}
{{- end -}}

{{/* True when the consistent-hash front runs. */}}
{{- define "ingero-fleet.lbEnabled" -}}
{{- if and .Values.lb.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* True when the entry Service (<fullname>-lb) exists: the front runs, or one replica takes agents itself. */}}
{{- define "ingero-fleet.entryEnabled" -}}
{{- if or (include "ingero-fleet.lbEnabled" .) (eq (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- define "ingero-fleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ingero-fleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference; an empty tag means the chart's appVersion (args: image values, root context). */}}
{{- define "ingero-fleet.image" -}}
{{- $image := index . 0 -}}
{{- printf "%s:%s" $image.repository (default (index . 1).Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/*
The preStop hook of an Envoy container: POST /drain_listeners?graceful to the
admin port on loopback (the image has bash but no curl: bash's /dev/tcp), then
wait envoy.drainSeconds so in-flight pushes finish before SIGTERM (on which
Envoy exits at once). Arg: root context, admin port.
*/}}
{{- define "ingero-fleet.drainHook" -}}
{{- $ := index . 0 -}}
preStop:
  exec:
    command:
      - /bin/bash
      - -c
      - >-
        exec 3<>/dev/tcp/127.0.0.1/{{ index . 1 }}
        && printf 'POST /drain_listeners?graceful HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' >&3
        && timeout 2 cat <&3 >/dev/null;
        sleep {{ $.Values.envoy.drainSeconds }}
{{- end -}}

{{/* Soft spread over nodes (topologySpread), for pods of one component. Args: root context, component. */}}
{{- define "ingero-fleet.topologySpread" -}}
{{- $ := index . 0 -}}
{{- if $.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: {{ $.Values.topologySpread.maxSkew }}
    topologyKey: {{ $.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "ingero-fleet.selectorLabels" $ | nindent 8 }}
        app.kubernetes.io/component: {{ index . 1 }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the replicas and the front load balancer. */}}
{{- define "ingero-fleet.podCommon" -}}
serviceAccountName: {{ include "ingero-fleet.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
