// node-nvidia-smi 1.0.0 ships no types. It runs `exec('nvidia-smi -q -x')` and parses the XML
// with xml2js ({ explicitArray: false, trim: true }): a text element is a string (with its
// unit, "24576 MiB", or "N/A"), an element that repeats is an array and otherwise an object,
// attributes sit under `$`, and an empty element can be a whitespace string.
declare module 'node-nvidia-smi' {
  namespace nvidiaSmi {
    type XmlValue = string | XmlElement | XmlValue[];
    interface XmlElement {
      $?: Record<string, string>;
      [child: string]: XmlValue | Record<string, string> | undefined;
    }
    interface Result {
      nvidia_smi_log?: XmlValue;
    }
    /**
     * `err` is exec's Error on a non-zero exit (its message is only "Command failed: …"),
     * a plain string when nvidia-smi wrote anything to stderr (the data is then dropped),
     * or xml2js's Error when the output does not parse.
     */
    type Callback = (err: Error | string | null, data?: Result) => void;
  }
  function nvidiaSmi(callback: nvidiaSmi.Callback): void;
  export = nvidiaSmi;
}
