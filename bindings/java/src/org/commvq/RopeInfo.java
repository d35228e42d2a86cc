package org.commvq;

/** A model's RoPE description (commvq_rope_info_t); setters chain. */
public final class RopeInfo {
  private double theta = 10000.0;
  private int scaling = Commvq.ROPE_SCALING_NONE;
  private double factor;
  private double lowFreqFactor;
  private double highFreqFactor;
  private double originalMaxPosition;

  public RopeInfo() {}

  static RopeInfo of(NativeRopeInfo r) {
    return new RopeInfo().theta(r.getTheta()).scaling(r.getScaling()).factor(r.getFactor())
        .lowFreqFactor(r.getLowFreqFactor()).highFreqFactor(r.getHighFreqFactor())
        .originalMaxPosition(r.getOriginalMaxPosition());
  }

  void copyTo(NativeRopeInfo r) {
    r.setTheta(theta);
    r.setScaling(scaling);
    r.setFactor(factor);
    r.setLowFreqFactor(lowFreqFactor);
    r.setHighFreqFactor(highFreqFactor);
    r.setOriginalMaxPosition(originalMaxPosition);
  }

  public RopeInfo theta(double theta) { this.theta = theta; return this; }
  /** Commvq.ROPE_SCALING_NONE, _LINEAR or _LLAMA3. */
  public RopeInfo scaling(int scaling) { this.scaling = scaling; return this; }
  public RopeInfo factor(double factor) { this.factor = factor; return this; }
  public RopeInfo lowFreqFactor(double v) { this.lowFreqFactor = v; return this; }
  public RopeInfo highFreqFactor(double v) { this.highFreqFactor = v; return this; }
  public RopeInfo originalMaxPosition(double v) { this.originalMaxPosition = v; return this; }

  public double theta() { return theta; }
  public int scaling() { return scaling; }
  public double factor() { return factor; }
  public double lowFreqFactor() { return lowFreqFactor; }
  public double highFreqFactor() { return highFreqFactor; }
  public double originalMaxPosition() { return originalMaxPosition; }
}
