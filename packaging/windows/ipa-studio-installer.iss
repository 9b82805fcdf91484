; Inno Setup script for the IPA Studio installer on Windows (Inno Setup 6).
;   iscc /DAppVersion=0.1.0 /DSourceDir=..\build\dist\ipa-studio-installer packaging\windows\ipa-studio-installer.iss
; build.ps1 runs the whole chain. It installs the small installer/launcher (PyInstaller, one folder)
; per user, with no administrator rights, adds it to the Start menu and starts it; the launcher then
; builds IPA Studio's environment. Uninstalling from "Apps" first runs the launcher's own Uninstall
; (which keeps models, pictures and settings), then removes the launcher.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\build\dist\ipa-studio-installer"
#endif

[Setup]
AppId={{7D3B1C52-4E0A-4A57-9C1E-1F5B7A2E9C11}
AppName=IPA Studio
AppVersion={#AppVersion}
AppPublisher=IPA Studio
DefaultDirName={localappdata}\Programs\IPAStudioInstaller
DefaultGroupName=IPA Studio
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
OutputDir=..\build
OutputBaseFilename=IPA-Studio-Setup-{#AppVersion}
SetupIconFile=..\..\resources\icons\ipa-studio.ico
UninstallDisplayIcon={app}\ipa-studio-installer.exe
WizardStyle=modern
Compression=lzma2/max
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion

[Icons]
Name: "{userprograms}\IPA Studio Installer"; Filename: "{app}\ipa-studio-installer.exe"; Comment: "Install, repair, update or remove IPA Studio"

[Run]
Filename: "{app}\ipa-studio-installer.exe"; Description: "Install IPA Studio now"; Flags: postinstall nowait skipifsilent

[UninstallRun]
Filename: "{app}\ipa-studio-installer.exe"; Parameters: "--headless --action uninstall"; Flags: runhidden waituntilterminated; RunOnceId: "RemoveIPAStudio"
