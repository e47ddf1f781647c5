{{/*
Chart name.
*/}}
{{- define "nlpjobs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most: a DNS label).
*/}}
{{- define "nlpjobs.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "nlpjobs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "nlpjobs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nlpjobs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "nlpjobs.labels" -}}
helm.sh/chart: {{ include "nlpjobs.chart" . }}
{{ include "nlpjobs.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nlpjobs
nlpjobs.io/task: {{ .Values.task }}
nlpjobs.io/run: {{ include "nlpjobs.runName" . }}
{{- end }}

{{/*
Run id: values.runName, else the release name.
*/}}
{{- define "nlpjobs.runName" -}}
{{- default .Release.Name .Values.runName }}
{{- end }}

{{/*
Storage root URI: s3://<bucket>/<prefix or task>.
*/}}
{{- define "nlpjobs.storageRoot" -}}
{{- $prefix := default .Values.task .Values.storage.prefix | trimAll "/" }}
{{- printf "s3://%s/%s" .Values.storage.bucket $prefix }}
{{- end }}

{{/*
Job file inside the image.
*/}}
{{- define "nlpjobs.jobFile" -}}
{{- if .Values.jobFile }}
{{- .Values.jobFile }}
{{- else if eq .Values.preset "local" }}
{{- printf "/app/jobs/local/%s.yaml" .Values.task }}
{{- else }}
{{- printf "/app/jobs/%s.yaml" .Values.task }}
{{- end }}
{{- end }}

{{/*
Container image of a stage. The tag defaults to <appVersion>-cuda for stages that request GPUs and
<appVersion>-cpu for the others (preprocessing never needs the CUDA image).
Usage: include "nlpjobs.image" (list $ "train")
*/}}
{{- define "nlpjobs.image" -}}
{{- $root := index . 0 }}
{{- $repo := tpl $root.Values.image.repository $root }}
{{- if $root.Values.image.digest }}
{{- printf "%s@%s" $repo $root.Values.image.digest }}
{{- else }}
{{- $flavour := ternary "cuda" "cpu" (gt (int (include "nlpjobs.gpus" .)) 0) }}
{{- $tag := tpl (default (printf "%s-%s" $root.Chart.AppVersion $flavour) $root.Values.image.tag) $root }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/*
GPUs a stage's pod requests: processesPerNode for train, evaluate.gpus for evaluate and predict.gpus for
predict when gpu.enabled; never for preprocess.
Usage: include "nlpjobs.gpus" (list $ "train")
*/}}
{{- define "nlpjobs.gpus" -}}
{{- $root := index . 0 }}
{{- $stage := index . 1 }}
{{- if not $root.Values.gpu.enabled }}0
{{- else if eq $stage "train" }}{{ $root.Values.processesPerNode | int }}
{{- else if eq $stage "evaluate" }}{{ $root.Values.evaluate.gpus | int }}
{{- else if eq $stage "predict" }}{{ $root.Values.predict.gpus | int }}
{{- else }}0
{{- end }}
{{- end }}

{{/*
Name of the run's JobSet: <fullname, at most 40 characters>. It also names the headless Service, and the
training pods' hostnames <jobset>-train-0-<index> stay within a 63-character DNS label.
*/}}
{{- define "nlpjobs.jobsetName" -}}
{{- include "nlpjobs.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Arguments every stage gets after the subcommand: the job file, the storage root, the
run id and the user's overrides. Rendered as YAML list items.
*/}}
{{- define "nlpjobs.commonArgs" -}}
- "-c"
- {{ include "nlpjobs.jobFile" . | quote }}
- "--set"
- {{ printf "storage=%s" (include "nlpjobs.storageRoot" .) | quote }}
- "--set"
- {{ printf "name=%s" (include "nlpjobs.runName" .) | quote }}
{{- range .Values.overrides }}
- "--set"
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
DeepSpeed overrides of the train stage (rendered only when deepspeed.enabled: else the job file decides).
*/}}
{{- define "nlpjobs.deepspeedArgs" -}}
{{- with .Values.deepspeed -}}
- "--set"
- "deepspeed.enabled=true"
- "--set"
- {{ printf "deepspeed.zero_stage=%d" (int .zeroStage) | quote }}
- "--set"
- {{ printf "deepspeed.offload_optimizer=%t" .offloadOptimizer | quote }}
- "--set"
- {{ printf "deepspeed.offload_params=%t" .offloadParams | quote }}
{{- end }}
{{- end }}

{{/*
Container command (rendered only when image.command is set; else the image's ENTRYPOINT runs).
*/}}
{{- define "nlpjobs.command" -}}
command:
  {{- toYaml .Values.image.command | nindent 2 }}
{{- end }}

{{/*
Environment shared by every container: storage, credentials from Secrets, writable cache locations.
*/}}
{{- define "nlpjobs.env" -}}
- name: NLPJOBS_CACHE
  value: /scratch/cache
- name: HF_HOME
  value: /scratch/hf
- name: TMPDIR
  value: /scratch/tmp
- name: HOME
  value: /scratch/home
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.storage.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.storage.secretName }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.secretName }}
      key: {{ .Values.storage.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.secretName }}
      key: {{ .Values.storage.secretAccessKeyKey }}
{{- end }}
{{- if .Values.hubToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hubToken.secretName }}
      key: {{ .Values.hubToken.key }}
{{- end }}
{{- with .Values.tracking.mlflow }}
{{- if .uri }}
- name: MLFLOW_TRACKING_URI
  value: {{ .uri | quote }}
{{- end }}
{{- if .experiment }}
- name: MLFLOW_EXPERIMENT_NAME
  value: {{ .experiment | quote }}
{{- end }}
{{- $secret := .secretName }}
{{- if $secret }}
{{- range list "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" "MLFLOW_TRACKING_TOKEN" }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Restricted-profile container securityContext.
*/}}
{{- define "nlpjobs.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Volume mounts of every container: /scratch (caches), /tmp (also /scratch/tmp = TMPDIR), /dev/shm (optional).
Usage: include "nlpjobs.volumeMounts" (list $ withShm)
*/}}
{{- define "nlpjobs.volumeMounts" -}}
{{- $root := index . 0 -}}
- name: scratch
  mountPath: /scratch
- name: tmp
  mountPath: /tmp
- name: tmp
  mountPath: /scratch/tmp
{{- if and (index . 1) $root.Values.shm.enabled }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- end }}

{{/*
Pod volumes matching nlpjobs.volumeMounts. /dev/shm is memory-backed: its size limit defaults to
shm.perProcess x the stage's processes, and counts against the pod's memory.
Usage: include "nlpjobs.volumes" (list $ withShm)
*/}}
{{- define "nlpjobs.volumes" -}}
{{- $root := index . 0 -}}
- name: scratch
  emptyDir:
    {{- with $root.Values.scratch.sizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
- name: tmp
  emptyDir:
    {{- with $root.Values.scratch.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- if and (index . 1) $root.Values.shm.enabled }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $root.Values.shm.sizeLimit | default (printf "%dMi" (mul (int $root.Values.shm.perProcessMi) (int $root.Values.processesPerNode))) }}
{{- end }}
{{- end }}

{{/*
Container resources of a stage with its GPU limit merged in. Training pods: train.resources when set, else
train.perProcess (cpu, memory in Mi) times processesPerNode, requests equal to limits for memory.
Usage: include "nlpjobs.resources" (list $ "train")
*/}}
{{- define "nlpjobs.resources" -}}
{{- $root := index . 0 }}
{{- $stage := index . 1 }}
{{- $res := deepCopy (index $root.Values $stage).resources }}
{{- if and (eq $stage "train") (not $res) }}
{{- $per := $root.Values.train.perProcess }}
{{- $n := int $root.Values.processesPerNode }}
{{- $memory := printf "%dMi" (mul (int $per.memoryMi) $n) }}
{{- $res = dict "requests" (dict "cpu" (printf "%d" (mul (int $per.cpu) $n)) "memory" $memory) "limits" (dict "memory" $memory) }}
{{- end }}
{{- $gpus := int (include "nlpjobs.gpus" (list $root $stage)) }}
{{- if gt $gpus 0 }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits $root.Values.gpu.resourceName $gpus }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- with $res }}
{{- toYaml . }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/*
A stage's Job podFailurePolicy. Rule order matters to the JobSet's failurePolicy, which reads the Job's
failure message: an exit code that no restart can fix fails the Job ("failed with exit code ..."), and so
does a disruption ("has condition DisruptionTarget ..."), each to be told apart there.
Usage: include "nlpjobs.podFailurePolicy" (list $ "train")
*/}}
{{- define "nlpjobs.podFailurePolicy" -}}
{{- $root := index . 0 }}
{{- $pfp := $root.Values.job.podFailurePolicy }}
{{- $codes := list }}
{{- range $pfp.failJobOnExitCodes }}{{ $codes = append $codes (int .) }}{{ end }}
{{- if or $pfp.ignoreDisruptions $codes -}}
podFailurePolicy:
  rules:
    {{- if $codes }}
    - action: FailJob
      onExitCodes:
        containerName: {{ index . 1 }}
        operator: In
        values:
          {{- /* the API wants them sorted and unique */}}
          {{- range $code := untilStep 1 256 1 }}
          {{- if has $code $codes }}
          - {{ $code }}
          {{- end }}
          {{- end }}
    {{- end }}
    {{- if $pfp.ignoreDisruptions }}
    - action: FailJob
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    {{- end }}
{{- end }}
{{- end }}

{{/*
Pod metadata (labels and annotations) of a stage.
Usage: include "nlpjobs.podMetadata" (list $ "train")
*/}}
{{- define "nlpjobs.podMetadata" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "nlpjobs.labels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ index . 1 }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod-level fields of a stage: restricted securityContext, no token, scheduling, pull secrets, grace period.
Scheduling: the stage's own non-empty nodeSelector/tolerations/affinity/priorityClassName, else the
top-level ones; pods that request GPUs also get gpu.nodeSelector and gpu.tolerations (so preprocessing
stays off the GPU pool).
Usage: include "nlpjobs.podSpecCommon" (list $ "train")
*/}}
{{- define "nlpjobs.podSpecCommon" -}}
{{- $root := index . 0 }}
{{- $stage := index $root.Values (index . 1) }}
{{- $gpus := int (include "nlpjobs.gpus" .) -}}
restartPolicy: Never
terminationGracePeriodSeconds: {{ $root.Values.job.terminationGracePeriodSeconds }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
enableServiceLinks: false
{{- with $root.Values.serviceAccount.name }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ $root.Values.securityContext.runAsUser }}
  runAsGroup: {{ $root.Values.securityContext.runAsGroup }}
  fsGroup: {{ $root.Values.securityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ kindIs "map" . | ternary (get (kindIs "map" . | ternary . dict) "name") . }}
  {{- end }}
{{- end }}
{{- with (default $root.Values.priorityClassName $stage.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- $selector := deepCopy (default $root.Values.nodeSelector $stage.nodeSelector) }}
{{- if gt $gpus 0 }}{{ $selector = merge $selector $root.Values.gpu.nodeSelector }}{{ end }}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := default $root.Values.tolerations $stage.tolerations }}
{{- if gt $gpus 0 }}{{ $tolerations = concat $tolerations $root.Values.gpu.tolerations }}{{ end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.affinity $stage.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The main container of a stage: `nlpjobs <stage>` (train: `train --launch-from-env`, a static-rendezvous
torchrun of processesPerNode workers whose exit code the pod keeps; predict: `batch-predict`, one worker per pod
of an Indexed Job, with the stage's own overrides).
Usage: include "nlpjobs.stageContainer" (list $ "train" $masterAddress)
*/}}
{{- define "nlpjobs.stageContainer" -}}
{{- $root := index . 0 }}
{{- $stage := index . 1 -}}
- name: {{ $stage }}
  image: {{ include "nlpjobs.image" (list $root $stage) | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  {{- if $root.Values.image.command }}
  {{- include "nlpjobs.command" $root | nindent 2 }}
  {{- end }}
  args:
    - {{ ternary "batch-predict" $stage (eq $stage "predict") | quote }}
    {{- if eq $stage "train" }}
    - "--launch-from-env"
    {{- end }}
    {{- include "nlpjobs.commonArgs" $root | nindent 4 }}
    {{- if eq $stage "predict" }}
    {{- range $root.Values.predict.overrides }}
    - "--set"
    - {{ . | quote }}
    {{- end }}
    {{- end }}
    {{- if and (eq $stage "train") $root.Values.deepspeed.enabled }}
    {{- include "nlpjobs.deepspeedArgs" $root | nindent 4 }}
    {{- end }}
  {{- if eq $stage "train" }}
  ports:
    - name: rendezvous
      containerPort: {{ $root.Values.launch.masterPort }}
      protocol: TCP
  {{- end }}
  env:
    {{- if eq $stage "train" }}
    # JOB_COMPLETION_INDEX (the machine rank) is set by Kubernetes for Indexed Jobs.
    - name: NLPJOBS_NNODES
      value: {{ $root.Values.nodes | int | toString | quote }}
    - name: NLPJOBS_NPROC_PER_NODE
      value: {{ $root.Values.processesPerNode | int | toString | quote }}
    - name: NLPJOBS_MASTER_ADDR
      value: {{ index . 2 | quote }}
    - name: NLPJOBS_MASTER_PORT
      value: {{ $root.Values.launch.masterPort | int | toString | quote }}
    - name: NLPJOBS_RDZV_TIMEOUT
      value: {{ $root.Values.launch.rdzvTimeoutSeconds | int | toString | quote }}
    # torchrun gives its workers this long to commit a checkpoint after SIGTERM before it kills them:
    # the pod's grace period minus a margin for the upload's last request and the exit.
    - name: NLPJOBS_SHUTDOWN_TIMEOUT
      value: {{ max 5 (sub ($root.Values.job.terminationGracePeriodSeconds | int) 15) | toString | quote }}
    {{- end }}
    {{- if eq $stage "predict" }}
    # With JOB_COMPLETION_INDEX (set by Kubernetes): pod i of N predicts the parts p with p % N == i.
    - name: NLPJOBS_PREDICT_WORKERS
      value: {{ $root.Values.predict.pods | int | toString | quote }}
    {{- end }}
    {{- include "nlpjobs.env" $root | nindent 4 }}
  resources:
    {{- include "nlpjobs.resources" (list $root $stage) | nindent 4 }}
  securityContext:
    {{- include "nlpjobs.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    {{- include "nlpjobs.volumeMounts" (list $root (ne $stage "preprocess")) | nindent 4 }}
{{- end }}
