# Build the Windows installer of IPA Studio (run from the repository root, in PowerShell):
#   python -m pip install -r packaging\requirements.txt
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1 [-OfflineBundle]
# Makes packaging\build\IPA-Studio-Setup-VERSION.exe (Inno Setup 6's iscc must be on PATH or in its
# default folder) and, with -OfflineBundle, packaging\build\wheelhouse for windows-x86_64-cpu.
param([switch]$OfflineBundle)
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")

$version = python -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])"
Remove-Item -Recurse -Force packaging\build\app, packaging\build\dist, packaging\build\work -ErrorAction SilentlyContinue
python -m pip wheel --no-deps --wheel-dir packaging\build\app .
$env:APP_WHEEL = (Get-ChildItem packaging\build\app\ipa_studio-*.whl).FullName
python -m PyInstaller --noconfirm --distpath packaging\build\dist --workpath packaging\build\work packaging\launcher\ipa-studio-installer.spec

$iscc = (Get-Command iscc -ErrorAction SilentlyContinue).Source
if (-not $iscc) { $iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $iscc "/DAppVersion=$version" "/DSourceDir=..\build\dist\ipa-studio-installer" packaging\windows\ipa-studio-installer.iss
if ($LASTEXITCODE -ne 0) { throw "iscc failed" }

if ($OfflineBundle) {
    python packaging\make_offline_bundle.py windows-x86_64-cpu packaging\build\wheelhouse
}
Get-ChildItem packaging\build\*.exe
