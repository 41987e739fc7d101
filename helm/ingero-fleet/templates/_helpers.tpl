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
*/}}
{{- define "ingero-fleet.pluginConfig" -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c.threshold "k" (float64 $c.threshold.k) -}}
{{- $_ := set $c.threshold "ema_alpha" (float64 $c.threshold.ema_alpha) -}}
{{- $_ := set $c.quorum "coverage_fraction" (float64 $c.quorum.coverage_fraction) -}}
{{- toJson $c -}}
{{- end -}}

{{/* Where the pods mount the filter binary. */}}
{{- define "ingero-fleet.wasmPath" -}}
/etc/ingero-fleet/wasm/ingero_fleet_wasm.wasm
{{- end -}}

{{/*
The replicas' Envoy config: envoy/envoy.yaml (files/envoy.yaml links to it) with
the listeners on config.listen, the mounted .wasm and the plugin configuration.
These are the same three rewrites tests/fleet.py render_envoy makes, so the
chart runs the configuration the end-to-end tests run.
*/}}
{{- define "ingero-fleet.envoyConfig" -}}
{{- $envoy := .Files.Get "files/envoy.yaml" | fromYaml -}}
{{- if not $envoy.static_resources -}}
{{- fail "files/envoy.yaml is missing or invalid (it links to envoy/envoy.yaml)" -}}
{{- end -}}
{{- $listen := .Values.config.listen -}}
{{- $plugin := include "ingero-fleet.pluginConfig" . -}}
{{- $wasm := include "ingero-fleet.wasmPath" . -}}
{{- range $listener := $envoy.static_resources.listeners -}}
{{- $addr := get $listen $listener.name | required (printf "config.listen.%s is required" $listener.name) -}}
{{- $_ := set $listener.address.socket_address "address" (include "ingero-fleet.host" $addr) -}}
{{- $_ := set $listener.address.socket_address "port_value" (include "ingero-fleet.port" $addr | int) -}}
{{- range $chain := $listener.filter_chains -}}
{{- range $filter := $chain.filters -}}
{{- range $http := $filter.typed_config.http_filters | default list -}}
{{- if eq $http.name "envoy.filters.http.wasm" -}}
{{- $_ := set $http.typed_config.config.configuration "value" $plugin -}}
{{- $_ := set $http.typed_config.config.vm_config.code.local "filename" $wasm -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $envoy -}}
{{- end -}}

{{/*
The front load balancer's Envoy config: envoy/front-lb.yaml with one endpoint
per replica (stable pod DNS name, hash key = pod name) and listeners on the
replicas' push and API ports.
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
{{- end -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $pod := printf "%s-%d" $fullname $i -}}
{{- $host := printf "%s.%s.%s.svc.%s" $pod $fullname $.Release.Namespace $.Values.clusterDomain -}}
{{- $endpoint := dict "address" (dict "socket_address" (dict "address" $host "port_value" $pushPort)) -}}
{{- $metadata := dict "filter_metadata" (dict "envoy.lb" (dict "hash_key" $pod)) -}}
{{- $endpoints = append $endpoints (dict "endpoint" $endpoint "metadata" $metadata) -}}
{{- end -}}
{{- range $cluster := $lb.static_resources.clusters -}}
{{- $_ := set $cluster.load_assignment "endpoints" (list (dict "lb_endpoints" $endpoints)) -}}
{{- end -}}
{{- toYaml $lb -}}
{{- end -}}

{{/* The replicas' configuration file: the Envoy config, or the standalone server's config.yaml. */}}
{{- define "ingero-fleet.podConfig" -}}
{{- if .Values.standalone.enabled -}}
{{- include "ingero-fleet.pluginConfig" . | fromJson | toYaml -}}
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

{{/* Pod-level settings shared by the replicas and the front load balancer. */}}
{{- define "ingero-fleet.podCommon" -}}
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
